//! The parameter store, BatchNorm buffers, modes and safetensors weights.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use temper_core::kernels::ConvCfg;
use temper_core::nn::{BatchNorm2d, Conv2d, Linear};
use temper_core::weights::{self, Strictness};
use temper_core::{
    Backbone, Builder, Classifier, Ctx, Error, Mode, ModeGuard, ModelInfo, Network, Normalization, Role,
};

struct Net {
    conv: Conv2d,
    bn: BatchNorm2d,
    fc: Linear,
}

impl Backbone for Net {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> temper_core::Result<Tensor> {
        let h = temper_core::nn::relu(&self.bn.forward(&self.conv.forward(x, ctx)?, ctx)?, ctx)?;
        self.fc.forward(&temper_core::nn::global_avg_pool(&h, ctx)?, ctx)
    }
}

fn net(seed: u64) -> Result<Network> {
    let dev = Device::Cpu;
    let b = Builder::new(&dev, temper_core::seed::rng_with(seed, "test"));
    let conv = Conv2d::new(
        &b.pp("conv"),
        3,
        4,
        3,
        ConvCfg {
            padding: 1,
            ..ConvCfg::default()
        },
        false,
    )?;
    let bn = BatchNorm2d::new(&b.pp("bn"), 4)?;
    let fc = Linear::new(&b.pp("fc"), 4, 5, true)?;
    let info = ModelInfo {
        name: "net".into(),
        num_classes: 5,
        input_shape: [3, 8, 8],
    };
    Ok(Network::new(
        info,
        b.finish(),
        Box::new(Net { conv, bn, fc }),
        Normalization::cifar10(),
        &dev,
    )?)
}

fn input() -> Result<Tensor> {
    Ok(Tensor::rand(0f32, 1f32, (4, 3, 8, 8), &Device::Cpu)?)
}

#[test]
fn running_statistics_are_buffers_not_parameters() -> Result<()> {
    let n = net(0)?;
    let names: Vec<_> = n.params().trainable().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias"]
    );
    let bufs: Vec<_> = n.params().buffers().map(|e| e.name.as_str()).collect();
    assert_eq!(
        bufs,
        ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    );
    // Decay groups: weights decay, BatchNorm affine and biases do not.
    let decay: Vec<_> = n
        .params()
        .with_role(Role::Weight)
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(decay, ["conv.weight", "fc.weight"]);
    Ok(())
}

#[test]
fn train_mode_updates_buffers_and_eval_mode_does_not() -> Result<()> {
    let n = net(1)?;
    let x = input()?;
    let rm = |n: &Network| -> Result<Vec<f32>> {
        Ok(n.params()
            .get("bn.running_mean")
            .map(|e| e.var.as_tensor().to_vec1::<f32>())
            .transpose()?
            .unwrap_or_default())
    };
    let before = rm(&n)?;
    n.set_mode(Mode::Eval);
    n.forward(&x)?;
    assert_eq!(rm(&n)?, before, "eval mode must not touch running statistics");
    n.set_mode(Mode::Train);
    n.forward(&x)?;
    assert_ne!(rm(&n)?, before, "train mode must update running statistics");
    let nbt = n
        .params()
        .get("bn.num_batches_tracked")
        .map(|e| e.var.as_tensor().to_scalar::<i64>());
    assert_eq!(nbt.transpose()?, Some(1));
    // No gradient reaches a buffer.
    let loss = n.forward(&x)?.sum_all()?;
    let grads = loss.backward()?;
    for b in n.params().buffers() {
        assert!(
            grads.get(b.var.as_tensor()).is_none(),
            "{} received a gradient",
            b.name
        );
    }
    for p in n.params().trainable() {
        assert!(
            grads.get(p.var.as_tensor()).is_some(),
            "{} has no gradient",
            p.name
        );
    }
    Ok(())
}

#[test]
fn input_only_forward_tracks_no_parameter() -> Result<()> {
    let n = net(2)?;
    let x = candle_core::Var::from_tensor(&input()?)?;
    let opts = temper_core::ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    let grads = n.forward_opts(x.as_tensor(), opts)?.sum_all()?.backward()?;
    assert!(grads.get(x.as_tensor()).is_some());
    for p in n.params().trainable() {
        assert!(grads.get(p.var.as_tensor()).is_none(), "{} was tracked", p.name);
    }
    Ok(())
}

#[test]
fn mode_guard_restores_the_previous_mode() -> Result<()> {
    let n = net(3)?;
    n.set_mode(Mode::Train);
    {
        let _g = ModeGuard::new(&n, Mode::Eval);
        assert_eq!(n.mode(), Mode::Eval);
    }
    assert_eq!(n.mode(), Mode::Train);
    Ok(())
}

#[test]
fn bad_input_is_a_clear_error() -> Result<()> {
    let n = net(4)?;
    let x = Tensor::zeros((2, 1, 8, 8), DType::F32, &Device::Cpu)?;
    let e = n.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("expected 3 input channels"), "{e}");
    let x = Tensor::zeros((3, 8, 8), DType::F32, &Device::Cpu)?;
    assert!(n.forward(&x).is_err());
    Ok(())
}

#[test]
fn save_then_load_round_trips_exactly_in_every_dtype() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = net(5)?;
    a.set_mode(Mode::Train);
    a.forward(&input()?)?; // non-trivial buffers
    a.set_mode(Mode::Eval);
    let x = input()?;
    let want = a.forward(&x)?;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let p = dir.path().join(format!("w-{dtype:?}.safetensors"));
        weights::save(a.params(), &p, dtype, &HashMap::new())?;
        let b = net(6)?;
        let r = weights::load(b.params(), &p, "net", Strictness::Strict)?;
        assert_eq!(r.loaded, a.params().len());
        assert_eq!(r.file_dtype, Some(dtype));
        let got = b.forward(&x)?;
        let diff = (&got - &want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        if dtype == DType::F32 {
            assert_eq!(diff, 0.0);
        } else {
            assert!(diff < 0.05, "{dtype:?}: {diff}");
        }
        assert_eq!(
            weights::read_metadata(&p)?.get("format").map(String::as_str),
            Some("pt")
        );
    }
    Ok(())
}

fn write(path: &std::path::Path, tensors: Vec<(&str, Tensor)>) -> Result<()> {
    let t: Vec<(String, Tensor)> = tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    weights::save_tensors(&t, path, &HashMap::new())?;
    Ok(())
}

#[test]
fn strict_loading_names_every_missing_unexpected_and_misshaped_key_and_loads_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = net(7)?;
    let mut sd = a.params().state_dict()?;
    sd.retain(|(k, _)| k != "fc.bias");
    for (k, t) in sd.iter_mut() {
        if k == "conv.weight" {
            *t = Tensor::zeros((4, 3, 5, 5), DType::F32, &Device::Cpu)?;
        }
    }
    sd.push(("head.weight".into(), Tensor::zeros(2, DType::F32, &Device::Cpu)?));
    let p = dir.path().join("bad.safetensors");
    weights::save_tensors(&sd, &p, &HashMap::new())?;
    let b = net(8)?;
    let before = b.params().state_dict()?;
    let err = weights::load(b.params(), &p, "net", Strictness::Strict).err();
    let Some(Error::WeightMismatch { mismatch, path, .. }) = err else {
        panic!("expected a mismatch error, got {err:?}")
    };
    assert_eq!(path, p);
    assert_eq!(mismatch.missing, ["fc.bias"]);
    assert_eq!(mismatch.unexpected, ["head.weight"]);
    assert_eq!(mismatch.shape.len(), 1);
    assert_eq!(mismatch.shape[0].key, "conv.weight");
    let msg = Error::WeightMismatch {
        path: p.clone(),
        model: "net".into(),
        mismatch,
    }
    .to_string();
    for needle in [
        "fc.bias",
        "head.weight",
        "conv.weight",
        "bad.safetensors",
        "[4, 3, 5, 5]",
    ] {
        assert!(msg.contains(needle), "message lacks {needle}: {msg}");
    }
    // Nothing was loaded.
    for ((k, x), (_, y)) in before.iter().zip(b.params().state_dict()?.iter()) {
        assert_eq!(
            x.flatten_all()?.to_vec1::<f32>().ok(),
            y.flatten_all()?.to_vec1::<f32>().ok(),
            "{k} changed"
        );
    }
    Ok(())
}

#[test]
fn lenient_loading_skips_missing_keys_but_never_shapes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("partial.safetensors");
    write(&p, vec![("fc.bias", Tensor::ones(5, DType::F32, &Device::Cpu)?)])?;
    let b = net(9)?;
    let r = weights::load(b.params(), &p, "net", Strictness::Lenient)?;
    assert_eq!(r.loaded, 1);
    assert!(r.mismatch.missing.contains(&"conv.weight".to_string()));
    write(&p, vec![("fc.bias", Tensor::ones(6, DType::F32, &Device::Cpu)?)])?;
    assert!(weights::load(b.params(), &p, "net", Strictness::Lenient).is_err());
    Ok(())
}

#[test]
fn num_batches_tracked_may_be_absent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = net(10)?;
    let mut sd = a.params().state_dict()?;
    sd.retain(|(k, _)| !k.ends_with("num_batches_tracked"));
    let p = dir.path().join("old.safetensors");
    weights::save_tensors(&sd, &p, &HashMap::new())?;
    weights::load(net(11)?.params(), &p, "net", Strictness::Strict)?;
    Ok(())
}

#[test]
fn unreadable_and_corrupt_files_name_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let n = net(12)?;
    let missing = dir.path().join("nope.safetensors");
    let e = weights::load(n.params(), &missing, "net", Strictness::Strict)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("nope.safetensors"), "{e}");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")?;
    let e = weights::load(n.params(), &garbage, "net", Strictness::Strict)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("garbage.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    let wrong = dir.path().join("ints.safetensors");
    let mut sd = n.params().state_dict()?;
    for (k, t) in sd.iter_mut() {
        if k == "fc.bias" {
            *t = Tensor::zeros(5, DType::U8, &Device::Cpu)?;
        }
    }
    weights::save_tensors(&sd, &wrong, &HashMap::new())?;
    let e = weights::load(n.params(), &wrong, "net", Strictness::Strict)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("fc.bias") && e.contains("U8"), "{e}");
    Ok(())
}

#[test]
fn atomic_write_leaves_no_temporary_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("x.bin");
    temper_core::fsutil::write_atomic(&p, b"one")?;
    temper_core::fsutil::write_atomic(&p, b"two")?;
    assert_eq!(std::fs::read(&p)?, b"two");
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // A directory that does not exist is an error naming the path.
    let e = temper_core::fsutil::write_atomic(&dir.path().join("no/such/dir/f"), b"x")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("no/such/dir"), "{e}");
    Ok(())
}

#[test]
fn seeded_builds_are_identical_and_different_seeds_differ() -> Result<()> {
    let a = net(13)?.params().state_dict()?;
    let b = net(13)?.params().state_dict()?;
    let c = net(14)?.params().state_dict()?;
    let v = |s: &[(String, Tensor)]| -> Result<Vec<f32>> { Ok(s[0].1.flatten_all()?.to_vec1::<f32>()?) };
    assert_eq!(v(&a)?, v(&b)?);
    assert_ne!(v(&a)?, v(&c)?);
    Ok(())
}

#[test]
fn device_strings_parse_or_explain() {
    assert!(temper_core::device::parse("cpu").is_ok());
    assert!(temper_core::device::parse(" CPU ").is_ok());
    for bad in ["gpu", "cuda:x", "cpu:1", ""] {
        let e = temper_core::device::parse(bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(&format!("'{bad}'")) || e.contains(bad.trim()),
            "{bad}: {e}"
        );
    }
    if !cfg!(feature = "cuda") {
        let e = temper_core::device::parse("cuda:0")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--features cuda"), "{e}");
    }
}

#[test]
fn normalization_specs_parse_and_validate() -> Result<()> {
    assert_eq!(Normalization::parse("cifar10", 3)?, Normalization::cifar10());
    let n = Normalization::parse("mean=0.5;std=0.25", 3)?;
    assert_eq!(n.mean, [0.5; 3]);
    assert!(Normalization::parse("imagenet", 1).is_err());
    assert!(Normalization::parse("mean=0.5;std=0", 1).is_err());
    assert!(Normalization::parse("bogus", 1).is_err());
    Ok(())
}

/// Metadata keys come out sorted, so saving the same model with the same metadata twice
/// gives byte-identical files (safetensors keeps metadata in a `HashMap`, whose order differs
/// between maps and runs).
#[test]
fn saved_files_are_byte_identical() -> Result<()> {
    let model = net(3)?;
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for i in 0..4 {
        // A fresh map each time: a new random iteration order.
        let meta: HashMap<String, String> = (0..16)
            .map(|k| (format!("key{k}"), format!("value{k}")))
            .collect();
        let path = dir.path().join(format!("m{i}.safetensors"));
        weights::save(model.params(), &path, DType::F32, &meta)?;
        files.push(std::fs::read(&path)?);
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]), "identical saves differ");
    let header_len = u64::from_le_bytes(files[0][..8].try_into()?) as usize;
    let header = std::str::from_utf8(&files[0][8..8 + header_len])?;
    let positions: Vec<usize> = ["\"format\"", "\"key0\"", "\"key1\"", "\"key10\"", "\"key9\""]
        .iter()
        .map(|k| header.find(k).unwrap_or(usize::MAX))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{header}");
    // The rewritten header still loads, with every tensor and the metadata intact.
    let back = net(4)?;
    weights::load(
        back.params(),
        dir.path().join("m0.safetensors"),
        "net",
        Strictness::Strict,
    )?;
    for (a, b) in model
        .params()
        .state_dict()?
        .iter()
        .zip(back.params().state_dict()?.iter())
    {
        assert_eq!(a.0, b.0);
        let d = (a.1.to_dtype(DType::F64)? - b.1.to_dtype(DType::F64)?)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
        assert_eq!(d, 0.0, "{}", a.0);
    }
    assert_eq!(
        weights::read_metadata(dir.path().join("m0.safetensors"))?.len(),
        17
    );
    Ok(())
}
