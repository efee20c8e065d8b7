//! The README's client example. Run it against a daemon started with
//! `harpocratesd --dev`: `cargo run --example quickstart`.

use harpocrates::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = Client::connect_default().await?;
    match client.generate_key("orders", 256).await {
        Ok(_) | Err(Error::KeyExists(_)) => {}
        Err(e) => return Err(e),
    }
    let ct = client.encrypt("orders", b"card 4242", Some(b"order:17")).await?;
    let pt = client.decrypt("orders", &ct, Some(b"order:17")).await?;
    assert_eq!(pt.expose(), b"card 4242");

    // Many operations in one frame, each answered on its own:
    let answers =
        client.batch().encrypt("orders", b"a", None).encrypt("nope", b"b", None).send().await?;
    assert!(answers[0].is_ok() && matches!(answers[1], Err(Error::KeyNotFound(_))));
    println!("ok: {} bytes of ciphertext, batch of {}", ct.len(), answers.len());
    Ok(())
}
