use std::time::Instant;
use candle_core::{Device, Tensor};
fn t<T>(w: &str, f: impl Fn() -> candle_core::Result<T>) -> candle_core::Result<()> {
    f()?;
    let s = Instant::now();
    for _ in 0..5 { f()?; }
    println!("{w:>30}: {:7.2} ms", s.elapsed().as_secs_f64() * 200.0);
    Ok(())
}
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let a = Tensor::randn(0f32, 1., (131072, 27), &d)?;
    let w = Tensor::randn(0f32, 1., (16, 27), &d)?;
    let big = Tensor::randn(0f32, 1., (128, 32, 32, 16), &d)?;
    t("matmul 131072x27 @ 27x16", || a.matmul(&w.t()?))?;
    t("matmul w contiguous", || { let wt = w.t()?.contiguous()?; a.matmul(&wt) })?;
    t("gelu_erf 2M", || big.gelu_erf())?;
    t("gelu 2M", || big.gelu())?;
    t("relu 2M", || big.relu())?;
    t("add 2M", || &big + &big)?;
    t("pad 2M", || big.pad_with_zeros(1, 1, 1))?;
    let x = Tensor::randn(0f32, 1., (128, 64, 64, 3), &d)?;
    t("narrow+stack 9 taps", || {
        let p = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?.reshape((128, 33, 2, 33, 2, 3))?;
        let mut v = vec![];
        for dy in 0..3 { for dx in 0..3 { v.push(p.narrow(1, dy/2, 32)?.narrow(2, dy%2, 1)?.narrow(3, dx/2, 32)?.narrow(4, dx%2, 1)?.reshape((128,32,32,3))?); } }
        Tensor::stack(&v, 4)
    })?;
    Ok(())
}
