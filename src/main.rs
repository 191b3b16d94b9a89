fn main() -> std::process::ExitCode {
    messenger_gateway::cli::main()
}
