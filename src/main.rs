fn main() {
    std::process::exit(berth::main_with_args(std::env::args().skip(1).collect()));
}
