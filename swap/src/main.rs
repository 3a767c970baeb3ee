fn main() -> std::process::ExitCode {
    berth_swap::main()
}
