fn main() -> std::process::ExitCode {
    messenger_gateway::startup::main()
}
