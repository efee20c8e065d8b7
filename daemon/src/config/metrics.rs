//! `[metrics]`: where and how often the daemon writes its metrics for node_exporter's
//! textfile collector.

use std::time::Duration;

use super::raw::RawMetrics;
use super::{ConfigError, duration, invalid};
pub use crate::metrics::textfile::{DEFAULT_INTERVAL, MetricsSettings};

/// Shortest interval accepted (each write is a file, an fsync and a rename).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest interval accepted (node_exporter would show numbers older than this).
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Checks `[metrics]` and fills in defaults.
pub fn metrics_settings(raw: Option<RawMetrics>) -> Result<MetricsSettings, ConfigError> {
    let raw = raw.unwrap_or_default();
    if let Some(file) = &raw.textfile
        && (file.is_relative()
            || file.file_name().is_none()
            || file.as_os_str().as_encoded_bytes().ends_with(b"/"))
    {
        return Err(invalid(
            "metrics.textfile",
            format!("{} is not an absolute file path", file.display()),
        ));
    }
    let interval = duration("metrics.interval", raw.interval.as_deref(), DEFAULT_INTERVAL)?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(invalid(
            "metrics.interval",
            format!(
                "{} is outside {}..={}",
                humantime::format_duration(interval),
                humantime::format_duration(MIN_INTERVAL),
                humantime::format_duration(MAX_INTERVAL)
            ),
        ));
    }
    Ok(MetricsSettings { textfile: raw.textfile, interval })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn check(textfile: Option<&str>, interval: Option<&str>) -> Result<MetricsSettings, String> {
        metrics_settings(Some(RawMetrics {
            textfile: textfile.map(PathBuf::from),
            interval: interval.map(str::to_owned),
        }))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_to_no_file_every_15_seconds() {
        assert_eq!(metrics_settings(None).expect("defaults"), MetricsSettings::default());
        assert_eq!(MetricsSettings::default().interval, Duration::from_secs(15));
    }

    #[test]
    fn the_textfile_is_an_absolute_file_path() {
        let ok = check(Some("/var/lib/node_exporter/harpocrates.prom"), Some("30s"))
            .expect("absolute file");
        assert_eq!(ok.interval, Duration::from_secs(30));
        for bad in ["harpocrates.prom", "./x.prom", "/", "/var/lib/node_exporter/", "/a/.."] {
            let e = check(Some(bad), None).expect_err(bad);
            assert!(e.contains("metrics.textfile"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_interval_is_bounded() {
        for bad in ["500ms", "2h", "0s", "soon"] {
            let e = check(None, Some(bad)).expect_err(bad);
            assert!(e.contains("metrics.interval"), "{bad}: {e}");
        }
        assert_eq!(check(None, Some("1s")).expect("1s").interval, MIN_INTERVAL);
        assert_eq!(check(None, Some("1h")).expect("1h").interval, MAX_INTERVAL);
    }
}
