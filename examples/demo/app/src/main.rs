fn main() -> std::process::ExitCode {
    berth_demo_app::main()
}
