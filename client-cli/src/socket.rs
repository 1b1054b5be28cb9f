//! Where hearthd's socket is when `--socket`/`HEARTH_SOCKET` is not given.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Result, bail};
use hearth_protocol::api::default_socket_path;

/// Resolves the socket path in this order: the `--socket` flag, `$HEARTH_SOCKET`, then
/// [`default_socket_path`] with `$XDG_RUNTIME_DIR` as the runtime directory and
/// `$HEARTH_DATA_DIR`, else `<platform data dir>/hearth`, as the data directory.
///
/// `env` and `platform_data_dir` are parameters so tests need not touch the process
/// environment. Empty variables count as unset, as a shell's `VAR=` usually means (which is
/// why `HEARTH_SOCKET` is read here rather than by clap, which would reject it as empty).
pub fn resolve(
    flag: Option<PathBuf>,
    env: impl Fn(&str) -> Option<OsString>,
    platform_data_dir: Option<PathBuf>,
) -> Result<PathBuf> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = flag.or_else(|| non_empty("HEARTH_SOCKET")) {
        return Ok(path);
    }
    let runtime_dir = non_empty("XDG_RUNTIME_DIR");
    let data_dir =
        non_empty("HEARTH_DATA_DIR").or_else(|| platform_data_dir.map(|d| d.join("hearth")));
    match (runtime_dir, data_dir) {
        (None, None) => bail!(
            "cannot tell where hearthd's socket is: no XDG_RUNTIME_DIR, no HEARTH_DATA_DIR \
             and no home directory. Pass --socket PATH or set HEARTH_SOCKET."
        ),
        // With a runtime directory the data directory is not consulted, so an empty one is fine.
        (runtime_dir, data_dir) => Ok(default_socket_path(
            runtime_dir.as_deref(),
            &data_dir.unwrap_or_default(),
        )),
    }
}

/// [`resolve`] against the real process environment.
pub fn resolve_from_env(flag: Option<PathBuf>) -> Result<PathBuf> {
    resolve(flag, |name| std::env::var_os(name), dirs::data_dir())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn platform() -> Option<PathBuf> {
        Some(PathBuf::from("/home/a/.local/share"))
    }

    #[test]
    fn flag_wins_over_everything() {
        let vars = [
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("HEARTH_DATA_DIR", "/d"),
        ];
        let got = resolve(Some("/tmp/x.sock".into()), env(&vars), platform()).unwrap();
        assert_eq!(got, Path::new("/tmp/x.sock"));
    }

    #[test]
    fn env_socket_comes_next() {
        let vars = [
            ("HEARTH_SOCKET", "/tmp/e.sock"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
        ];
        let got = resolve(None, env(&vars), platform()).unwrap();
        assert_eq!(got, Path::new("/tmp/e.sock"));
    }

    #[test]
    fn runtime_dir_comes_next() {
        let vars = [
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("HEARTH_DATA_DIR", "/d"),
        ];
        let got = resolve(None, env(&vars), platform()).unwrap();
        assert_eq!(got, Path::new("/run/user/1/hearth/hearthd.sock"));
    }

    #[test]
    fn then_the_data_dir_from_env() {
        let vars = [("XDG_RUNTIME_DIR", ""), ("HEARTH_DATA_DIR", "/d")];
        let got = resolve(None, env(&vars), platform()).unwrap();
        assert_eq!(got, Path::new("/d/hearthd.sock"));
    }

    #[test]
    fn then_the_platform_data_dir() {
        let vars = [("HEARTH_DATA_DIR", "")];
        let got = resolve(None, env(&vars), platform()).unwrap();
        assert_eq!(got, Path::new("/home/a/.local/share/hearth/hearthd.sock"));
    }

    #[test]
    fn runtime_dir_alone_is_enough() {
        let vars = [("XDG_RUNTIME_DIR", "/run/user/1")];
        let got = resolve(None, env(&vars), None).unwrap();
        assert_eq!(got, Path::new("/run/user/1/hearth/hearthd.sock"));
    }

    #[test]
    fn nowhere_to_look_is_an_error_that_says_what_to_do() {
        let err = resolve(None, env(&[]), None).unwrap_err().to_string();
        assert!(err.contains("--socket"), "{err}");
    }
}
