//! native-trainer: trains, evaluates, scores, samples and exports the Itera-Lite models.
//! (The training loop lands with the trainer issue; this is the CLI's shape.)

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "native-trainer", version, about = "Train and export the baseline and Itera-Lite models on the CPU")]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!("native-trainer: training is not implemented yet (see the trainer issue)");
    std::process::exit(2);
}
