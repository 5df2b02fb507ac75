//! Test helpers: tensors from rows, values back, finite-difference gradient checks.
//! (rm-losses' helpers of the same kind are private to that crate's tests.)

use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::device::test_device;

pub(crate) fn device() -> Device {
    test_device()
}

pub(crate) fn matrix(rows: &[Vec<f32>], device: &Device) -> Tensor<2> {
    let width = rows.first().map_or(0, Vec::len);
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(values, [rows.len(), width]), device)
}

pub(crate) fn scalar(t: Tensor<1>) -> f64 {
    assert_eq!(t.dims(), [1], "a mean is a [1] tensor");
    f64::from(t.into_scalar::<f32>())
}

pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

pub(crate) fn rows<const D: usize>(t: Tensor<D>) -> Vec<Vec<f32>> {
    let width = *t.dims().last().unwrap();
    values(t)
        .chunks(width.max(1))
        .map(<[f32]>::to_vec)
        .collect()
}

/// The autodiff gradient of `loss` with respect to `x` (`[B, T]`).
pub(crate) fn gradient(x: &[Vec<f32>], loss: &dyn Fn(Tensor<2>) -> Tensor<1>) -> Vec<Vec<f32>> {
    let device = device().autodiff();
    let t = matrix(x, &device).require_grad();
    let grads = loss(t.clone()).backward();
    rows(t.grad(&grads).expect("the input receives a gradient"))
}

/// Central differences `(L(x + h) − L(x − h)) / 2h` of `loss` at every element of `x`, on the
/// plain device, in f64 arithmetic of f32 evaluations.
pub(crate) fn finite_difference(
    x: &[Vec<f32>],
    step: f32,
    loss: &dyn Fn(Tensor<2>) -> Tensor<1>,
) -> Vec<Vec<f32>> {
    let device = device();
    let eval = |x: &[Vec<f32>]| scalar(loss(matrix(x, &device)));
    let mut out = vec![vec![0.0f32; x[0].len()]; x.len()];
    for i in 0..x.len() {
        for j in 0..x[0].len() {
            let mut plus = x.to_vec();
            plus[i][j] += step;
            let mut minus = x.to_vec();
            minus[i][j] -= step;
            out[i][j] = ((eval(&plus) - eval(&minus)) / (2.0 * f64::from(step))) as f32;
        }
    }
    out
}

/// Asserts that the autodiff gradient of `loss` at `x` matches central differences within
/// `tolerance` per element; returns the worst difference.
pub(crate) fn check_gradient(
    x: &[Vec<f32>],
    tolerance: f32,
    loss: &dyn Fn(Tensor<2>) -> Tensor<1>,
) -> f32 {
    let analytic = gradient(x, loss);
    let numeric = finite_difference(x, 1e-3, loss);
    let mut worst = 0.0f32;
    for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
        for (j, (a, n)) in a.iter().zip(n).enumerate() {
            assert!(
                (a - n).abs() <= tolerance,
                "element [{i}, {j}]: autodiff {a}, finite difference {n}"
            );
            worst = worst.max((a - n).abs());
        }
    }
    worst
}
