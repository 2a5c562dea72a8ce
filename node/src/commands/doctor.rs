//! `trellis doctor`: what compute backend this binary runs on (libtorch's version, CPU threads,
//! CUDA devices), so a miner can see before staking whether `--device cuda` will work.

pub fn doctor() {
    println!("{}", trellis_trainer::device::BackendInfo::probe());
}
