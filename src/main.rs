//! The `nimgate` command line: serve, check, keys (new, hash, add, revoke, list), audit verify, demo.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    nimgate::cli::main()
}
