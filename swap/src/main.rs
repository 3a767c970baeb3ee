fn main() -> std::process::ExitCode {
    berth_core::cli::main("berth-swap", berth_swap::run)
}
