//! harpoctl's key-manager commands: `kek`, `datakey`, `envelope`.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use harpocrates_client::{Client, KekInfo, RotationStep};
use serde_json::json;

use crate::cli::{DatakeyCommand, EnvelopeArgs, EnvelopeCommand, KekCommand, RotateStep};
use crate::output::Out;
use crate::{Failure, decode_base64, read_stdin};

fn kek_json(k: &KekInfo) -> serde_json::Value {
    json!({
        "name": k.name,
        "active_version": k.active_version,
        "pending_version": k.pending_version,
        "pending_validated": k.pending_validated,
        "versions": k.versions.iter().map(|v| json!({ "version": v.version, "state": format!("{:?}", v.state).to_lowercase() })).collect::<Vec<_>>(),
    })
}

fn print_kek(out: Out, k: &KekInfo) {
    if out.json {
        println!("{}", kek_json(k));
        return;
    }
    let pending = match k.pending_version {
        Some(v) if k.pending_validated => format!(", v{v} pending (validated)"),
        Some(v) => format!(", v{v} pending"),
        None => String::new(),
    };
    let versions: Vec<String> = k
        .versions
        .iter()
        .map(|v| format!("v{}:{}", v.version, format!("{:?}", v.state).to_lowercase()))
        .collect();
    println!("{}: active v{}{pending} [{}]", k.name, k.active_version, versions.join(" "));
}

/// `kek ...`
pub async fn kek(client: &Client, out: Out, cmd: KekCommand) -> Result<(), Failure> {
    match cmd {
        KekCommand::Create { name } => print_kek(out, &client.generate_kek(&name).await?),
        KekCommand::List => {
            let keks = client.list_keks().await?;
            if out.json {
                println!("{}", serde_json::Value::Array(keks.iter().map(kek_json).collect()));
            } else if keks.is_empty() {
                println!("no KEKs");
            }
            if !out.json {
                for k in &keks {
                    print_kek(out, k);
                }
            }
        }
        KekCommand::Rotate { step, name } => {
            let step = match step {
                RotateStep::Prepare => RotationStep::Prepare,
                RotateStep::Validate => RotationStep::Validate,
                RotateStep::Commit => RotationStep::Commit,
                RotateStep::Rollback => RotationStep::Rollback,
                RotateStep::Status => RotationStep::Status,
            };
            print_kek(out, &client.rotate(&name, step).await?);
        }
        KekCommand::Retire { name, version, destroy, yes } => {
            if destroy && !yes {
                return Err(Failure::Usage(format!(
                    "destroying {name} v{version} makes what it protected unrecoverable; add --yes to confirm"
                )));
            }
            print_kek(out, &client.retire_kek_version(&name, version, destroy).await?);
        }
    }
    Ok(())
}

/// `datakey ...`
pub async fn datakey(client: &Client, out: Out, cmd: DatakeyCommand) -> Result<(), Failure> {
    let (key, wrapped) = match cmd {
        DatakeyCommand::Derive { kek, context, len } => {
            (client.derive_data_key(&kek, context.as_bytes(), len).await?, None)
        }
        DatakeyCommand::Generate { kek } => {
            let k = client.generate_data_key(&kek).await?;
            let w = k.wrapped.clone();
            (k, w)
        }
    };
    let hex: String = key.dek.expose().iter().map(|b| format!("{b:02x}")).collect();
    if out.json {
        println!(
            "{}",
            json!({ "kek": key.kek.name, "version": key.kek.version, "dek_hex": hex,
                    "wrapped_base64": wrapped.as_ref().map(|w| B64.encode(w)) })
        );
    } else {
        println!("kek:     {}", key.kek);
        println!("dek:     {hex}");
        if let Some(w) = wrapped {
            println!("wrapped: {}", B64.encode(w));
        }
    }
    Ok(())
}

fn aad(args: &EnvelopeArgs) -> Option<&[u8]> {
    args.aad.as_deref().map(str::as_bytes)
}

fn emit(bytes: &[u8], base64: bool) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if base64 { writeln!(stdout, "{}", B64.encode(bytes)) } else { stdout.write_all(bytes) }
}

/// `envelope ...`
pub async fn envelope(client: &Client, cmd: EnvelopeCommand) -> Result<(), Failure> {
    match cmd {
        EnvelopeCommand::Encrypt { kek, common } => {
            let plaintext = read_stdin()?;
            let ct = client
                .encrypt_with_context(&kek, common.context.as_bytes(), &plaintext, aad(&common))
                .await?;
            emit(&ct, common.base64)?;
        }
        EnvelopeCommand::Decrypt { common } => {
            let input = read_stdin()?;
            let ct = if common.base64 { decode_base64(&input)? } else { input.to_vec() };
            let pt =
                client.decrypt_with_context(common.context.as_bytes(), &ct, aad(&common)).await?;
            std::io::stdout().lock().write_all(pt.expose())?;
        }
        EnvelopeCommand::Rewrap { common, file: None } => {
            let input = read_stdin()?;
            let ct = if common.base64 { decode_base64(&input)? } else { input.to_vec() };
            emit(
                &client.rewrap(common.context.as_bytes(), &ct, aad(&common)).await?,
                common.base64,
            )?;
        }
        EnvelopeCommand::Rewrap { common, file: Some(path) } => {
            rewrap_file(client, &common, &path).await?
        }
    }
    Ok(())
}

/// Rewraps a file of base64 ciphertexts (one per line; blank lines are dropped) in
/// batches, with a progress bar on stderr, and replaces the file atomically only when
/// every line succeeded.
async fn rewrap_file(
    client: &Client,
    common: &EnvelopeArgs,
    path: &std::path::Path,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| (n + 1, l))
        .collect();
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} rewrap [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let fail = |bar: &indicatif::ProgressBar, line: usize, why: String| {
        bar.abandon();
        Failure::Usage(format!("line {line} of {}: {why}; the file is unchanged", path.display()))
    };
    let mut out = String::with_capacity(text.len());
    for chunk in lines.chunks(256) {
        let mut cts = Vec::with_capacity(chunk.len());
        for (line, l) in chunk {
            cts.push(
                decode_base64(l.as_bytes()).map_err(|_| fail(&bar, *line, "not base64".into()))?,
            );
        }
        let calls = cts.iter().map(|ct| client.rewrap(common.context.as_bytes(), ct, aad(common)));
        for ((line, _), result) in chunk.iter().zip(futures::future::join_all(calls).await) {
            let ct =
                result.map_err(|e| fail(&bar, *line, format!("could not be rewrapped ({e})")))?;
            out.push_str(&B64.encode(ct));
            out.push('\n');
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let tmp = path.with_extension("rewrap.tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, path)?;
    eprintln!("rewrapped {} ciphertexts in {}", lines.len(), path.display());
    Ok(())
}
