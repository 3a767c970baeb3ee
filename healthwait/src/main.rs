fn main() -> std::process::ExitCode {
    berth_core::cli::main("berth-healthwait", berth_healthwait::run)
}
