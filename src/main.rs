//! The `nimgate` command line: serve, check, keys new, audit verify, demo.
#![forbid(unsafe_code)]

/// mimalloc: fewer cycles per allocation and less fragmentation than glibc malloc under
/// many small per-request allocations (see benches/).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nimgate::cli::main()
}
