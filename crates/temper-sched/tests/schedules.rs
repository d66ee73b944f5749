//! Every schedule at its start, warm-up end, peak and end; monotonicity where it applies;
//! spec round trips; and errors that name the offending key.

use anyhow::Result;
use temper_sched::{
    Constant, Cosine, Cyclic, Error, Exponential, OneCycle, Piecewise, Progress, Schedule, ScheduleSpec,
    Shape, Ssfd, Step, Warmup,
};

fn sched(spec: &str, epochs: f64) -> Result<Schedule> {
    Ok(spec.parse::<ScheduleSpec>()?.check(epochs)?)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {{
        let (a, b): (f64, f64) = ($a, $b);
        assert!(close(a, b), "{} = {a} but expected {b}", stringify!($a));
    }};
}

/// Sampled densely over `[from, to]`, the schedule never rises (or never falls).
fn monotone(s: &Schedule, from: f64, to: f64, rising: bool) {
    let xs: Vec<f64> = (0..=1000)
        .map(|i| from + (to - from) * i as f64 / 1000.0)
        .collect();
    for w in xs.windows(2) {
        let (a, b) = (s.lr(w[0]), s.lr(w[1]));
        let ok = if rising { b >= a } else { b <= a };
        assert!(ok, "{s}: lr({}) = {a}, lr({}) = {b}", w[0], w[1]);
    }
}

#[test]
fn constant() -> Result<()> {
    let s = sched("constant:lr=0.01", 10.0)?;
    for t in [0.0, 3.0, 10.0] {
        assert_eq!(s.lr(t), 0.01);
    }
    assert_eq!(sched("const:lr=0.01", 10.0)?, s);
    Ok(())
}

#[test]
fn step_milestones_as_fractions_and_epochs() -> Result<()> {
    let s = sched("step:lr=0.1,milestones=0.5/0.75,gamma=0.1", 10.0)?;
    assert_eq!(s.lr(0.0), 0.1);
    assert_eq!(s.lr(4.999), 0.1);
    // At a milestone the decayed value already applies, as in PyTorch's MultiStepLR.
    assert_close!(s.lr(5.0), 0.01);
    assert_close!(s.lr(7.5), 0.001);
    assert_close!(s.lr(10.0), 0.001);
    monotone(&s, 0.0, 10.0, false);

    // Rice et al.'s PGD-AT schedule, milestones in epochs.
    let s = sched("multistep:lr=0.1,milestones=100ep/150ep", 200.0)?;
    assert_eq!(s.lr(99.9), 0.1);
    assert_close!(s.lr(100.0), 0.01);
    assert_close!(s.lr(150.0), 0.001);
    assert_close!(s.lr(200.0), 0.001);

    let s = sched("step:lr=0.1,every=30ep,gamma=0.5", 90.0)?;
    assert_eq!(s.lr(29.99), 0.1);
    assert_close!(s.lr(30.0), 0.05);
    assert_close!(s.lr(60.0), 0.025);
    assert_close!(s.lr(90.0), 0.0125);
    monotone(&s, 0.0, 90.0, false);
    Ok(())
}

#[test]
fn exponential() -> Result<()> {
    let s = sched("exp:lr=0.1,gamma=0.9", 10.0)?;
    assert_eq!(s.lr(0.0), 0.1);
    assert_close!(s.lr(1.0), 0.09);
    // Continuous in the fractional epoch: half an epoch is sqrt(gamma).
    assert_close!(s.lr(0.5), 0.1 * 0.9f64.sqrt());
    assert_close!(s.lr(10.0), 0.1 * 0.9f64.powi(10));
    monotone(&s, 0.0, 10.0, false);

    let s = sched("exponential:lr=0.1,final=1e-4", 10.0)?;
    assert_eq!(s.lr(0.0), 0.1);
    assert_close!(s.lr(5.0), 0.1 * 1e-3f64.sqrt());
    assert_eq!(s.lr(10.0), 1e-4);
    monotone(&s, 0.0, 10.0, false);
    Ok(())
}

#[test]
fn cosine() -> Result<()> {
    let s = sched("cosine:peak=0.1,final=0.001", 10.0)?;
    assert_eq!(s.lr(0.0), 0.1);
    assert_close!(s.lr(5.0), (0.1 + 0.001) / 2.0);
    assert_eq!(s.lr(10.0), 0.001);
    monotone(&s, 0.0, 10.0, false);
    assert_eq!(sched("cosine:peak=0.1", 10.0)?.lr(10.0), 0.0);
    Ok(())
}

#[test]
fn cosine_with_warm_restarts() -> Result<()> {
    // Equal cycles of 10 epochs.
    let s = sched("cosine:peak=0.1,final=0,period=10ep", 30.0)?;
    assert_eq!(s.lr(0.0), 0.1);
    assert_close!(s.lr(5.0), 0.05);
    assert!(s.lr(9.999) < 1e-7);
    assert_eq!(s.lr(10.0), 0.1, "a restart applies from its first instant");
    assert_close!(s.lr(25.0), 0.05);
    assert_eq!(s.lr(30.0), 0.0, "a run ending on a restart ends at `final`");
    monotone(&s, 10.0, 19.99, false);

    // Cycles of 1, 2 and 4 epochs: [0, 1), [1, 3), [3, 7).
    let s = sched("cosine:peak=0.1,period=1ep,mult=2", 7.0)?;
    assert_close!(s.lr(0.5), 0.05);
    assert_eq!(s.lr(1.0), 0.1);
    assert_close!(s.lr(2.0), 0.05);
    assert_eq!(s.lr(3.0), 0.1);
    assert_close!(s.lr(5.0), 0.05);
    assert!(s.lr(6.999) < 1e-7);
    assert_eq!(s.lr(7.0), 0.0);
    monotone(&s, 3.0, 7.0, false);
    Ok(())
}

#[test]
fn warmup_wrapper() -> Result<()> {
    // Goyal et al.: 5 epochs of warm-up in front of a step schedule, milestones unshifted.
    let s = sched(
        "warmup:length=5ep,start=0.01,then=[step:lr=0.1,milestones=30ep/60ep]",
        90.0,
    )?;
    assert_eq!(s.lr(0.0), 0.01);
    assert_close!(s.lr(2.5), 0.055);
    assert_eq!(s.lr(5.0), 0.1, "the warm-up ends at the wrapped schedule's value");
    assert_close!(s.lr(30.0), 0.01);
    assert_close!(s.lr(90.0), 0.001);
    monotone(&s, 0.0, 5.0, true);
    monotone(&s, 5.0, 90.0, false);

    let s = sched("warmup:length=0.1,then=[cosine:peak=0.1]", 10.0)?;
    let peak_at_end_of_warmup = sched("cosine:peak=0.1", 10.0)?.lr(1.0);
    assert_eq!(s.lr(0.0), 0.0);
    assert_close!(s.lr(0.5), peak_at_end_of_warmup / 2.0);
    assert_eq!(s.lr(1.0), peak_at_end_of_warmup);
    assert_eq!(s.lr(10.0), 0.0);

    // Wrappers nest.
    let s = sched(
        "warmup:length=0.5,then=[warmup:length=0.2,start=1,then=[constant:lr=2]]",
        10.0,
    )?;
    // The outer ramp goes from 0 to the inner schedule's value at epoch 5 (2, the inner ramp
    // being over by then).
    assert_close!(s.lr(2.5), 1.0);
    assert_eq!(s.lr(5.0), 2.0);
    Ok(())
}

#[test]
fn cyclic_is_fast_at_triangle() -> Result<()> {
    let s = sched("cyclic:peak=0.2", 10.0)?;
    assert_eq!(s.to_string(), "cyclic:peak=0.2,at=0.4");
    assert_eq!(s.lr(0.0), 0.0);
    assert_close!(s.lr(2.0), 0.1);
    assert_eq!(s.lr(4.0), 0.2);
    assert_close!(s.lr(7.0), 0.1);
    assert_eq!(s.lr(10.0), 0.0);
    monotone(&s, 0.0, 4.0, true);
    monotone(&s, 4.0, 10.0, false);
    // The peak can be placed anywhere, including the ends.
    assert_eq!(sched("cyclic:peak=0.2,at=0", 10.0)?.lr(0.0), 0.2);
    assert_eq!(sched("cyclic:peak=0.2,at=10ep", 10.0)?.lr(10.0), 0.2);
    Ok(())
}

#[test]
fn one_cycle_has_pytorch_defaults() -> Result<()> {
    let s = sched("onecycle:peak=0.1", 10.0)?;
    assert_eq!(
        s.to_string(),
        "onecycle:peak=0.1,warmup=0.3,start=0.004,final=4e-7,anneal=cos"
    );
    assert_eq!(s.lr(0.0), 0.004);
    assert_close!(s.lr(1.5), (0.004 + 0.1) / 2.0);
    assert_eq!(s.lr(3.0), 0.1);
    assert_close!(s.lr(6.5), (0.1 + 4e-7) / 2.0);
    assert_eq!(s.lr(10.0), 4e-7);
    monotone(&s, 0.0, 3.0, true);
    monotone(&s, 3.0, 10.0, false);

    let s = sched("one-cycle:peak=0.1,warmup=2ep,start=0.01,anneal=linear", 10.0)?;
    assert_eq!(s.lr(0.0), 0.01);
    assert_close!(s.lr(1.0), 0.055);
    assert_eq!(s.lr(2.0), 0.1);
    assert_eq!(
        s.lr(10.0),
        0.01 / 1e4,
        "an explicit start moves the default final with it"
    );
    Ok(())
}

#[test]
fn piecewise_linear() -> Result<()> {
    let s = sched("piecewise:points=0:0/0.4:0.2/1:0", 10.0)?;
    let c = sched("cyclic:peak=0.2", 10.0)?;
    for (t, lr) in s.sample(10.0, 101) {
        assert_close!(lr, c.lr(t));
    }
    // Flat before the first point and after the last; epochs and fractions mix.
    let s = sched("piecewise:points=0.2:0.1/5ep:0.05/0.8:0.01", 10.0)?;
    assert_eq!(s.lr(0.0), 0.1);
    assert_eq!(s.lr(2.0), 0.1);
    assert_close!(s.lr(3.5), 0.075);
    assert_eq!(s.lr(5.0), 0.05);
    assert_eq!(s.lr(8.0), 0.01);
    assert_eq!(s.lr(10.0), 0.01);
    monotone(&s, 0.0, 10.0, false);
    Ok(())
}

#[test]
fn ssfd_reaches_peak_at_warmup_end_and_final_at_end() -> Result<()> {
    for decay in ["exp", "linear", "cos"] {
        for epochs in [1.0, 7.0, 10.0, 33.0] {
            let spec = format!("ssfd:peak=0.05,warmup=0.3,decay={decay},final=1e-4");
            let s = sched(&spec, epochs)?;
            assert_eq!(s.lr(0.0), 0.05 / 100.0, "{spec}: start = peak / 100 by default");
            assert_eq!(
                s.lr(0.3 * epochs),
                0.05,
                "{spec} over {epochs}: the peak, exactly"
            );
            assert_eq!(
                s.lr(epochs),
                1e-4,
                "{spec} over {epochs}: the final value, exactly"
            );
            assert!(s.lr(0.15 * epochs) < s.lr(0.3 * epochs));
            monotone(&s, 0.0, 0.3 * epochs, true);
            monotone(&s, 0.3 * epochs, epochs, false);
        }
    }
    // The slow start is linear.
    let s = sched("ssfd:peak=0.05,warmup=0.3,start=0.01", 10.0)?;
    assert_close!(s.lr(1.5), 0.03);
    // Warm-up given in epochs.
    assert_eq!(sched("ssfd:warmup=2ep", 10.0)?.lr(2.0), 0.05);
    // No warm-up starts at the peak; a warm-up over the whole run ends at it.
    assert_eq!(sched("ssfd:warmup=0", 10.0)?.lr(0.0), 0.05);
    assert_eq!(sched("ssfd:warmup=1", 10.0)?.lr(10.0), 0.05);
    Ok(())
}

#[test]
fn ssfd_defaults_and_their_documented_properties() -> Result<()> {
    let spec: ScheduleSpec = "ssfd".parse()?;
    assert_eq!(spec, ScheduleSpec::Ssfd(Ssfd::default()));
    assert_eq!(
        spec.to_string(),
        "ssfd:peak=0.05,warmup=0.5,start=5e-4,final=1e-4,decay=linear"
    );
    // A peak on the command line moves the default start and final with it.
    assert_eq!(
        "ssfd:peak=0.1".parse::<ScheduleSpec>()?.to_string(),
        "ssfd:peak=0.1,warmup=0.5,start=0.001,final=2e-4,decay=linear"
    );

    // The default: a linear rise to the peak at half the run, a linear fall to final.
    let s = spec.check(100.0)?;
    assert!((s.lr(0.0) - 5e-4).abs() < 1e-12);
    assert!((s.lr(50.0) - 0.05).abs() < 1e-12);
    assert!((s.lr(75.0) - (0.05 + 1e-4) / 2.0).abs() < 1e-9, "{}", s.lr(75.0));
    assert!((s.lr(100.0) - 1e-4).abs() < 1e-12);
    // `exp` is the fastest decay right after the peak.
    for t in [35.0, 45.0, 65.0] {
        let exp = sched("ssfd:warmup=0.3,decay=exp", 100.0)?.lr(t);
        for other in ["linear", "cos"] {
            let o = sched(&format!("ssfd:warmup=0.3,decay={other}"), 100.0)?.lr(t);
            assert!(exp < o, "exp {exp} >= {other} {o} at epoch {t}");
        }
    }
    Ok(())
}

#[test]
fn display_parses_back_to_the_same_value() -> Result<()> {
    let specs = [
        "constant:lr=0.1",
        "const:lr=1e-7",
        "step:lr=0.1,milestones=0.5/0.75",
        "step:lr=0.1,milestones=100ep/150ep,gamma=0.2",
        "multistep:lr=0.1,every=30ep",
        "step:lr=0.1,every=0.25,gamma=0.5",
        "exp:lr=0.1,gamma=0.95",
        "exponential:lr=0.1,final=1e-4",
        "cosine:peak=0.1",
        "cosine:peak=0.1,final=1e-3,period=10ep,mult=2",
        "cosine:peak=0.1,period=0.2",
        "warmup:length=5ep,then=[cosine:peak=0.1]",
        "warmup:length=0.1,start=1e-3,then=[warmup:length=0.2,then=[step:lr=0.1,every=3ep]]",
        "cyclic:peak=0.2",
        "cyclic:peak=0.2,at=3ep",
        "onecycle:peak=0.1",
        "one-cycle:peak=0.1,warmup=0.25,start=0.01,final=1e-6,anneal=linear",
        "piecewise:points=0:0/0.4:0.2/1:0",
        "piecewise:points=0.5ep:0.123456789/7ep:3.3e-9",
        "ssfd",
        "ssfd:peak=0.05,warmup=0.3,decay=exp,final=1e-4",
        "ssfd:peak=0.03,warmup=4ep,start=0,final=0,decay=cos",
        "ssfd:peak=1e6,decay=linear",
        " ssfd : peak = 0.05 , decay = linear ",
    ];
    for text in specs {
        let spec: ScheduleSpec = text.parse()?;
        let shown = spec.to_string();
        let back: ScheduleSpec = shown.parse()?;
        assert_eq!(back, spec, "{text} -> {shown}");
        assert_eq!(back.to_string(), shown, "the displayed form is canonical");
        // Serde stores the same string.
        let json = serde_json::to_string(&spec)?;
        assert_eq!(json, format!("\"{shown}\""));
        assert_eq!(serde_json::from_str::<ScheduleSpec>(&json)?, spec);
    }
    // Bits survive, not just the first digits.
    let odd = ScheduleSpec::from(Constant::new(0.1 + 0.2));
    assert_eq!(odd.to_string().parse::<ScheduleSpec>()?, odd);
    Ok(())
}

#[test]
fn constructors_match_parsed_specs() -> Result<()> {
    let pairs: Vec<(ScheduleSpec, &str)> = vec![
        (Constant::new(0.1).into(), "constant:lr=0.1"),
        (
            Step::new(0.1, vec![Progress::Fraction(0.5), Progress::Epochs(150.0)]).into(),
            "step:lr=0.1,milestones=0.5/150ep,gamma=0.1",
        ),
        (
            Step::every(0.1, Progress::Epochs(30.0)).into(),
            "step:lr=0.1,every=30ep,gamma=0.1",
        ),
        (Exponential::new(0.1, 0.9).into(), "exp:lr=0.1,gamma=0.9"),
        (Exponential::to_final(0.1, 1e-3).into(), "exp:lr=0.1,final=0.001"),
        (Cosine::new(0.1).into(), "cosine:peak=0.1,final=0"),
        (
            Warmup::new(Progress::Epochs(5.0), Cosine::new(0.1)).into(),
            "warmup:length=5ep,start=0,then=[cosine:peak=0.1,final=0]",
        ),
        (Cyclic::new(0.2).into(), "cyclic:peak=0.2,at=0.4"),
        (
            OneCycle::new(0.1).into(),
            "onecycle:peak=0.1,warmup=0.3,start=0.004,final=4e-7,anneal=cos",
        ),
        (
            Piecewise::new(vec![(Progress::Fraction(0.0), 0.1), (Progress::Epochs(3.0), 0.0)]).into(),
            "piecewise:points=0:0.1/3ep:0",
        ),
        (
            Ssfd::new(0.05).into(),
            "ssfd:peak=0.05,warmup=0.5,start=5e-4,final=1e-4,decay=linear",
        ),
    ];
    for (spec, text) in pairs {
        assert_eq!(spec.to_string(), text);
        assert_eq!(text.parse::<ScheduleSpec>()?, spec);
    }
    assert_eq!(Shape::Exp.interp(1.0, 0.01, 0.5), 0.1);
    Ok(())
}

#[test]
fn schedule_serde_round_trip_revalidates() -> Result<()> {
    let s = sched("ssfd:peak=0.05,warmup=0.3", 12.5)?;
    let json = serde_json::to_string(&s)?;
    assert_eq!(
        json,
        r#"{"spec":"ssfd:peak=0.05,warmup=0.3,start=5e-4,final=1e-4,decay=linear","total_epochs":12.5}"#
    );
    let back: Schedule = serde_json::from_str(&json)?;
    assert_eq!(back, s);
    assert_eq!(back.lr(3.75), 0.05);
    // A stored schedule that is not valid is refused on load, naming the parameter.
    let bad = r#"{"spec":"ssfd:warmup=1.5","total_epochs":10}"#;
    let err = serde_json::from_str::<Schedule>(bad).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("`warmup`")), "{err:?}");
    assert!(serde_json::from_str::<Schedule>(r#"{"spec":"ssfd","total_epochs":0}"#).is_err());
    Ok(())
}

#[test]
fn lr_clamps_to_the_run_and_samples() -> Result<()> {
    let s = sched("ssfd:warmup=0.3,decay=exp", 10.0)?;
    assert_eq!(s.lr(-1.0), s.lr(0.0));
    assert_eq!(s.lr(f64::NAN), s.lr(0.0));
    assert_eq!(s.lr(11.0), s.lr(10.0));
    assert_eq!(s.lr_at_iter(30, 10), s.lr(3.0));
    assert_eq!(
        s.lr_at_iter(7, 0),
        s.lr(7.0),
        "zero iterations per epoch reads as one"
    );

    let pts = s.sample(10.0, 11);
    assert_eq!(pts.len(), 11);
    assert_eq!(pts[0], (0.0, s.lr(0.0)));
    assert_eq!(pts[3], (3.0, 0.05));
    assert_eq!(pts[10], (10.0, 1e-4));
    assert!(s.sample(10.0, 0).is_empty());
    assert_eq!(s.sample(10.0, 1), vec![(0.0, s.lr(0.0))]);
    let beyond = s.sample(20.0, 3);
    assert_eq!(beyond[2], (20.0, 1e-4), "flat past the end of the run");
    Ok(())
}

fn parse_err(spec: &str) -> Error {
    match spec.parse::<ScheduleSpec>() {
        Ok(s) => panic!("`{spec}` parsed as {s}"),
        Err(e) => e,
    }
}

fn check_err(spec: &str, epochs: f64) -> Error {
    match spec.parse::<ScheduleSpec>().map(|s| s.check(epochs)) {
        Ok(Ok(s)) => panic!("`{spec}` checked as {s}"),
        Ok(Err(e)) | Err(e) => e,
    }
}

#[test]
fn parse_errors_name_the_bad_key() {
    let e = parse_err("ssfd:peek=0.05");
    assert!(
        matches!(&e, Error::UnknownKey { key, kind: "ssfd", .. } if key == "peek"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("expected one of: peak, warmup, start, final, decay"),
        "{e}"
    );

    let e = parse_err("ssfd:peak=abc");
    assert!(matches!(&e, Error::BadValue { key, .. } if key == "peak"), "{e}");
    let e = parse_err("ssfd:peak=inf");
    assert!(matches!(&e, Error::BadValue { key, .. } if key == "peak"), "{e}");
    let e = parse_err("ssfd:decay=fast");
    assert!(matches!(&e, Error::BadValue { key, .. } if key == "decay"), "{e}");
    assert!(e.to_string().contains("exp, linear, cos"), "{e}");
    let e = parse_err("step:lr=0.1,milestones=0.5/x");
    assert!(
        matches!(&e, Error::BadValue { key, .. } if key == "milestones"),
        "{e}"
    );
    let e = parse_err("piecewise:points=0:0/0.5");
    assert!(
        matches!(&e, Error::BadValue { key, .. } if key == "points"),
        "{e}"
    );
    let e = parse_err("warmup:length=0.1,then=cosine:peak=0.1");
    assert!(matches!(&e, Error::BadValue { key, .. } if key == "then"), "{e}");
    let e = parse_err("warmup:length=0.1,then=[cosine:peek=0.1]");
    assert!(
        matches!(&e, Error::UnknownKey { key, kind: "cosine", .. } if key == "peek"),
        "{e}"
    );

    let e = parse_err("constant");
    assert!(
        matches!(
            e,
            Error::MissingKey {
                kind: "constant",
                key: "lr"
            }
        ),
        "{e}"
    );
    let e = parse_err("step:lr=0.1");
    assert!(
        matches!(
            e,
            Error::MissingKey {
                key: "milestones",
                ..
            }
        ),
        "{e}"
    );
    let e = parse_err("ssfd:peak=0.1,peak=0.2");
    assert!(
        matches!(&e, Error::DuplicateKey { key, .. } if key == "peak"),
        "{e}"
    );
    let e = parse_err("step:lr=0.1,milestones=0.5,every=2ep");
    assert!(
        matches!(&e, Error::InvalidParam { name, .. } if name == "every"),
        "{e}"
    );
    let e = parse_err("cosine:peak=0.1,mult=2");
    assert!(
        matches!(&e, Error::InvalidParam { name, .. } if name == "mult"),
        "{e}"
    );

    let e = parse_err("sgdr:peak=0.1");
    assert!(
        matches!(&e, Error::UnknownKind { kind, .. } if kind == "sgdr"),
        "{e}"
    );
    assert!(matches!(parse_err("ssfd:peak=0.1,"), Error::Syntax { .. }));
    assert!(matches!(parse_err("ssfd:peak"), Error::Syntax { .. }));
    assert!(matches!(
        parse_err("warmup:length=0.1,then=[cosine:peak=0.1"),
        Error::Syntax { .. }
    ));
}

#[test]
fn check_errors_name_the_bad_parameter() {
    let cases = [
        ("ssfd:warmup=1.5", "warmup"),
        ("ssfd:warmup=-0.1", "warmup"),
        ("ssfd:warmup=11ep", "warmup"),
        ("ssfd:peak=0", "peak"),
        ("ssfd:peak=-0.1", "peak"),
        ("ssfd:peak=0.05,final=0.1", "final"),
        ("ssfd:peak=0.05,start=0.1", "start"),
        ("ssfd:final=0,decay=exp", "final"),
        ("ssfd:start=-1e-3", "start"),
        ("constant:lr=-1", "lr"),
        ("step:lr=0.1,milestones=100/150", "milestones"),
        ("step:lr=0.1,milestones=0.75/0.5", "milestones"),
        ("step:lr=0.1,milestones=0.5,gamma=2", "gamma"),
        ("step:lr=0.1,every=0", "every"),
        ("exp:lr=0.1,gamma=0", "gamma"),
        ("exp:lr=0.1,final=0.2", "final"),
        ("cosine:peak=0.1,final=0.2", "final"),
        ("cosine:peak=0.1,period=0", "period"),
        ("cosine:peak=0.1,period=2ep,mult=0.5", "mult"),
        ("warmup:length=2,then=[constant:lr=0.1]", "length"),
        ("warmup:length=0.1,then=[cosine:peak=-1]", "then.peak"),
        ("cyclic:peak=0.2,at=1.2", "at"),
        ("onecycle:peak=0.1,anneal=exp,final=0", "final"),
        ("onecycle:peak=0.1,start=0.2", "start"),
        ("piecewise:points=0.5:0.1/0.2:0.1", "points"),
        ("piecewise:points=0:-0.1", "points"),
    ];
    for (spec, name) in cases {
        let e = check_err(spec, 10.0);
        assert!(
            matches!(&e, Error::InvalidParam { name: n, .. } if n == name),
            "`{spec}` should blame `{name}`: {e}"
        );
        assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
    }
    let e = check_err("ssfd", -1.0);
    assert!(
        matches!(&e, Error::InvalidParam { name, .. } if name == "epochs"),
        "{e}"
    );
    assert!(check_err("step:lr=0.1,milestones=100/150", 200.0)
        .to_string()
        .contains("100ep"));
}
