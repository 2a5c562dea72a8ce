//! Diagnostic: does one forward/backward give the same bits with 1 and with N threads?
//!   cargo run --release -p trellis-trainer --example thread_probe -- [PRESET] [BATCH] [THREADS]
//! Prints which parameters' gradients differ (none, if the model is thread-invariant).

use tch::{Device, Tensor};
use trellis_trainer::model::{Gpt, Preset};

fn gradients(preset: Preset, batch: i64, threads: i32) -> (f64, Vec<Vec<f32>>) {
    tch::set_num_threads(threads);
    let config = preset.config();
    let time = config.context_length as i64;
    let tokens: Vec<i64> = (0..batch * time).map(|i| (i * 31 + 7) % 256).collect();
    let targets: Vec<i64> = (0..batch * time).map(|i| (i * 17 + 3) % 256).collect();
    let mut model = Gpt::new(&config, 5, Device::Cpu).expect("preset shapes are valid");
    model.zero_grad();
    let loss =
        model.loss(&Tensor::from_slice(&tokens).view([batch, time]), &Tensor::from_slice(&targets).view([batch, time]));
    loss.backward();
    let grads = model
        .parameters()
        .iter()
        .map(|p| {
            let g = p.tensor.grad();
            let mut v = vec![0f32; g.numel()];
            g.copy_data(&mut v, g.numel());
            v
        })
        .collect();
    (loss.double_value(&[]), grads)
}

fn main() {
    trellis_trainer::device::configure_reproducibility();
    let args: Vec<String> = std::env::args().collect();
    let preset: Preset = args.get(1).map_or(Ok(Preset::Nano), |s| s.parse()).unwrap_or_else(|e| panic!("{e}"));
    let batch: i64 = args.get(2).map_or(8, |s| s.parse().expect("batch is a number"));
    let threads: i32 = args.get(3).map_or(2, |s| s.parse().expect("threads is a number"));
    let (loss_one, one) = gradients(preset, batch, 1);
    let (loss_many, many) = gradients(preset, batch, threads);
    println!(
        "{} batch {batch}: loss bits equal with 1 and {threads} threads: {}",
        preset.name(),
        loss_one.to_bits() == loss_many.to_bits()
    );
    let names: Vec<String> = Gpt::new(&preset.config(), 5, Device::Cpu)
        .expect("valid")
        .parameters()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let differing: Vec<&String> =
        names.iter().zip(one.iter().zip(&many)).filter(|(_, (a, b))| a != b).map(|(n, _)| n).collect();
    if differing.is_empty() {
        println!("all {} gradients are bit-identical", names.len());
    } else {
        println!("gradients that differ: {differing:?}");
    }
}
