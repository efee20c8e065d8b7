//! Reloading the configuration: what a new configuration changes ([`Plan`], pure logic
//! here) and the task that carries it out ([`task`]).
//!
//! Three kinds of change:
//! * the **backend** (module, token, PIN source, soft → PKCS#11) or the **pool** it is
//!   served by (sessions, queue, retries, key-manager caches): a new backend generation
//!   is built and swapped in while requests in flight finish on the old one;
//! * **in place**: connection limits and timeouts (for connections accepted from then
//!   on), the log level, the access policy;
//! * **at the next restart** only: the socket, I/O threads, the daemon-wide byte budget
//!   the audit sinks and the metrics textfile. They are reported, not silently ignored.

pub mod task;

use crate::config::Settings;
use crate::server::generation::PoolSettings;

/// What a reload from one configuration to another does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Open a new backend (the backend section or the PIN source changed).
    pub new_backend: bool,
    /// Start a new generation (always with a new backend; alone when only the pool's
    /// settings changed, over the same backend).
    pub new_generation: bool,
    /// Settings applied in place, by configuration name.
    pub applied: Vec<&'static str>,
    /// Settings that changed but apply only at the next restart.
    pub need_restart: Vec<&'static str>,
}

impl Plan {
    /// What it takes to go from `old` to `new`.
    pub fn between(old: &Settings, new: &Settings) -> Self {
        let new_backend = old.backend != new.backend || old.pin != new.pin;
        let new_generation = new_backend || PoolSettings::of(old) != PoolSettings::of(new);
        let mut plan = Plan { new_backend, new_generation, ..Plan::default() };
        let in_place = [
            ("max_frame", old.max_frame != new.max_frame),
            ("max_in_flight", old.max_in_flight != new.max_in_flight),
            ("max_connection_bytes", old.max_connection_bytes != new.max_connection_bytes),
            ("max_connections", old.max_connections != new.max_connections),
            ("frame_timeout", old.frame_timeout != new.frame_timeout),
            ("idle_timeout", old.idle_timeout != new.idle_timeout),
            ("shutdown_timeout", old.shutdown_timeout != new.shutdown_timeout),
            ("log_level", old.log_level != new.log_level),
        ];
        let restart = [
            ("socket_path", old.socket_path != new.socket_path),
            ("socket_mode", old.socket_mode != new.socket_mode),
            ("io_threads", old.io_threads != new.io_threads),
            ("max_total_bytes", old.max_total_bytes != new.max_total_bytes),
            ("audit", old.audit != new.audit),
            ("metrics", old.metrics != new.metrics),
        ];
        plan.applied =
            in_place.into_iter().filter(|(_, changed)| *changed).map(|(n, _)| n).collect();
        // The policy is compiled afresh from the file every time; it is always put in force.
        plan.applied.push("policy");
        plan.need_restart =
            restart.into_iter().filter(|(_, changed)| *changed).map(|(n, _)| n).collect();
        plan
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::config::{Args, BackendSettings};

    fn settings(dir: &Path, extra: &str) -> Settings {
        let path = dir.join("h.toml");
        let text = format!(
            "{extra}socket_path = {:?}\npin_file = {:?}\n[soft]\nstate_dir = {:?}\n",
            dir.join("s.sock"),
            dir.join("pin"),
            dir.join("state"),
        );
        std::fs::write(&path, text).expect("config");
        Settings::from_args(&Args { config: Some(path), ..Args::default() }).expect("valid")
    }

    #[test]
    fn an_unchanged_configuration_only_reapplies_the_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = settings(dir.path(), "");
        let b = settings(dir.path(), "");
        let plan = Plan::between(&a, &b);
        assert_eq!(plan, Plan { applied: vec!["policy"], ..Plan::default() });
    }

    #[test]
    fn limits_apply_in_place_and_the_socket_waits_for_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = settings(dir.path(), "");
        let mut b = settings(
            dir.path(),
            "max_in_flight = 7\nidle_timeout = \"9s\"\nlog_level = \"debug\"\n",
        );
        b.socket_path = PathBuf::from("/elsewhere.sock");
        let plan = Plan::between(&a, &b);
        assert!(!plan.new_generation && !plan.new_backend, "{plan:?}");
        assert_eq!(plan.applied, ["max_in_flight", "idle_timeout", "log_level", "policy"]);
        assert_eq!(plan.need_restart, ["socket_path"]);
    }

    #[test]
    fn pool_settings_make_a_new_generation_over_the_same_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = settings(dir.path(), "");
        let mut b = settings(dir.path(), "");
        b.max_sessions += 1;
        let plan = Plan::between(&a, &b);
        assert!(plan.new_generation && !plan.new_backend, "{plan:?}");
        let mut c = settings(dir.path(), "");
        c.keys.dek_cache_ttl += Duration::from_secs(1);
        assert!(Plan::between(&a, &c).new_generation);
    }

    #[test]
    fn another_token_or_pin_source_makes_a_new_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = settings(dir.path(), "");
        let mut b = settings(dir.path(), "");
        let BackendSettings::Soft(soft) = &mut b.backend else { panic!("soft expected") };
        soft.state_dir = dir.path().join("other");
        let plan = Plan::between(&a, &b);
        assert!(plan.new_backend && plan.new_generation, "{plan:?}");
        let mut c = settings(dir.path(), "");
        c.pin = crate::config::PinSource::default();
        assert!(Plan::between(&a, &c).new_backend, "the PIN source counts");
    }
}
