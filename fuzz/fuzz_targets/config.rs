//! `harpocrates.toml` is read at startup: a typo must give an error naming the field,
//! never a panic, and whatever `Settings::validate` accepts the daemon must be able to
//! run with. The one accepted value the daemon adds to `Instant::now()` is the data-key
//! TTL, so the target caches one key with it as the daemon would.

#![no_main]

use harpocrates_daemon::config::raw::RawConfig;
use harpocrates_daemon::config::{BackendSettings, Settings};
use harpocrates_daemon::keys::dek::{DekCache, DekId, Purpose};
use harpocrates_protocol::MAX_FRAME_CEILING;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(raw) = toml::from_str::<RawConfig>(text) else { return };
    let Ok(s) = Settings::validate(raw) else { return };
    assert!((1024..=MAX_FRAME_CEILING).contains(&s.max_frame));
    assert!(s.socket_mode <= 0o777);
    assert!(s.queue_depth >= 1 && s.max_connections >= 1 && s.max_in_flight >= 1);
    assert!(s.max_sessions >= 1 && s.keys.dek_cache_size >= 1);
    if let BackendSettings::Soft(soft) = &s.backend {
        assert!(soft.kdf.check().is_ok());
    }
    let id =
        DekId { kek: "k".into(), version: 1, context: vec![], len: 32, purpose: Purpose::Envelope };
    DekCache::new(1, s.keys.dek_cache_ttl).insert(id, &[0; 32]);
});
