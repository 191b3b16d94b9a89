/// mimalloc: with glibc's allocator the two worker threads contend for its
/// arena locks on every send (a quarter of the gateway's CPU time in the
/// efficiency benchmark); see the README's efficiency figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    messenger_gateway::cli::main()
}
