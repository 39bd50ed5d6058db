//! Process hardening at start-up (Linux): no core dumps (`RLIMIT_CORE` = 0) and not dumpable
//! (`PR_SET_DUMPABLE` = 0), so same-user processes cannot ptrace it or read its memory through
//! /proc, and a crash never writes the key to disk. Both via `nix`'s safe wrappers.

/// Apply hardening; returns what could not be applied (logged as warnings by the caller).
pub fn harden_process() -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0) {
        problems.push(format!("cannot disable core dumps: {e}"));
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        problems.push(format!("cannot clear the dumpable flag: {e}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_is_not_dumpable_after_hardening() {
        assert!(super::harden_process().is_empty());
        #[cfg(target_os = "linux")]
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
        assert_eq!((soft, hard), (0, 0));
    }
}
