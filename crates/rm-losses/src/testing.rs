//! Test helpers: tensors from slices, and finite-difference gradient checks against burn's
//! autodiff.

use burn::tensor::{Device, Tensor, TensorData};
use rm_core::device::test_device;

pub(crate) fn vector(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

pub(crate) fn matrix(values: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

pub(crate) fn tensor3(values: &[f32], shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

pub(crate) fn scalar(t: Tensor<1>) -> f32 {
    assert_eq!(t.dims(), [1], "a mean loss is a [1] tensor");
    t.into_scalar::<f32>()
}

pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

pub(crate) fn assert_close(actual: f32, expected: f32, tol: f32) {
    assert!(
        (actual - expected).abs() <= tol,
        "got {actual}, expected {expected} (tolerance {tol})"
    );
}

/// Step of the central differences.
const STEP: f32 = 1e-2;
/// Largest allowed |autodiff − finite difference| per element.
const TOLERANCE: f32 = 1e-3;

/// Compares the autodiff gradient of `loss` with respect to every element of every input
/// against the central difference `(L(x + h) − L(x − h)) / 2h`, evaluated on the plain device.
pub(crate) fn check_gradients<const D: usize>(
    inputs: &[(&[f32], [usize; D])],
    loss: impl Fn(Vec<Tensor<D>>) -> Tensor<1>,
) {
    let plain = test_device();
    let grad_device = plain.clone().autodiff();
    let build = |data: &[Vec<f32>], device: &Device, track: bool| -> Vec<Tensor<D>> {
        data.iter()
            .zip(inputs)
            .map(|(v, (_, shape))| {
                let t = Tensor::<D>::from_data(TensorData::new(v.clone(), *shape), device);
                if track { t.require_grad() } else { t }
            })
            .collect()
    };
    let base: Vec<Vec<f32>> = inputs.iter().map(|(v, _)| v.to_vec()).collect();

    let tracked = build(&base, &grad_device, true);
    let grads = loss(tracked.clone()).backward();
    let autodiff: Vec<Vec<f32>> = tracked
        .iter()
        .map(|t| values(t.grad(&grads).expect("every input receives a gradient")))
        .collect();

    let eval = |data: &[Vec<f32>]| scalar(loss(build(data, &plain, false)));
    for (i, input) in base.iter().enumerate() {
        for j in 0..input.len() {
            let mut plus = base.clone();
            plus[i][j] += STEP;
            let mut minus = base.clone();
            minus[i][j] -= STEP;
            let numeric = (eval(&plus) - eval(&minus)) / (2.0 * STEP);
            let analytic = autodiff[i][j];
            assert!(
                (numeric - analytic).abs() <= TOLERANCE,
                "input {i}, element {j}: autodiff {analytic}, finite difference {numeric}"
            );
        }
    }
}
