"""Strategies and gradient accumulation, with real TensorFlow on CPU devices."""

import os
import textwrap

import numpy as np
import pytest

from conductivity_tf import config as C
from tests.conftest import ROOT

SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from conductivity_tf import config as C, model as M, strategies as S
    from conductivity_tf.keras_compat import keras, set_random_seed, tf

    args = json.loads(sys.argv[1])
    set_random_seed(0)
    cfg = C.load_config(overrides=["model.norm=none", "model.widths=[4,8]", "model.head_units=8",
                                   "data.size=8"] + args["overrides"])
    hw = S.make_strategy(cfg.hardware)
    rng = np.random.default_rng(1)
    x = (rng.random((16, 8, 8, 8, 1)) < 0.5).astype("float32")
    y = rng.random((16, 3)).astype("float32") * 0.3
    with hw.strategy.scope():
        base = M.build_model(cfg.model, 8, 3)
        base.set_weights([np.random.default_rng(i).normal(0, 0.2, w.shape).astype("float32")
                          for i, w in enumerate(base.get_weights())])
        model = S.for_training(base, args["k"], args["reduction"])
        model.compile(optimizer=keras.optimizers.SGD(args.get("lr", 1000.0)), loss="mse",
                      steps_per_execution=args.get("spe", 1))
    before = [w.copy() for w in model.get_weights()]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True).repeat(args.get("steps", 1))
    model.fit(ds, epochs=1, verbose=0)
    delta = [b - a for a, b in zip(model.get_weights(), before)]
    replicas = []
    if hw.replicas > 1:
        for v in model.trainable_variables[:2]:
            replicas.append([t.numpy().tolist() for t in hw.strategy.experimental_local_results(v)])
    np.savez(args["out"], *delta)
    print(json.dumps({"replicas": hw.replicas, "replica_values": replicas}))
''')


def run(tmp_path, name, **args):
    import json
    import subprocess
    import sys

    args.setdefault("overrides", [])
    args.setdefault("reduction", "mean")
    args["out"] = str(tmp_path / (name + ".npz"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(args["out"]) as data:
        return [data[k] for k in sorted(data.files, key=lambda s: int(s.split("_")[1]))], info


def assert_close(a, b, rel=1e-5):
    for x, y in zip(a, b):
        scale = max(np.abs(y).max(), 1e-8)
        assert np.abs(x - y).max() <= rel * scale, (np.abs(x - y).max(), scale)


MIRRORED = ["hardware.kind=cpu", "hardware.devices=['/cpu:0','/cpu:1']"]


def test_gradient_accumulation_equals_the_full_batch_gradient(tmp_path):
    full, _ = run(tmp_path, "full", k=1)
    assert any(np.abs(d).max() > 1e-4 for d in full)
    accumulated, _ = run(tmp_path, "ga4", k=4, overrides=["hardware.gradient_accumulation=4"])
    assert_close(accumulated, full)
    summed, _ = run(tmp_path, "sum4", k=4, reduction="sum", overrides=["hardware.gradient_accumulation=4"])
    assert_close(summed, [4 * d for d in full])


def test_accumulation_under_mirrored_strategy_and_steps_per_execution(tmp_path):
    full, _ = run(tmp_path, "full", k=1)
    mirrored, info = run(tmp_path, "mirrored", k=2, overrides=MIRRORED + ["hardware.gradient_accumulation=2"])
    assert info["replicas"] == 2
    assert_close(mirrored, full)
    # two steps, run as one host call
    # weight changes of lr * gradient, large enough for float32 weights to carry them exactly (lr 1000);
    # over two steps a moderate rate keeps the second gradient meaningful
    two_full, _ = run(tmp_path, "two_full", k=1, steps=2, lr=1.0)
    two_acc, _ = run(tmp_path, "two_acc", k=2, steps=2, spe=2, lr=1.0,
                     overrides=MIRRORED + ["hardware.gradient_accumulation=2", "hardware.steps_per_execution=2"])
    assert_close(two_acc, two_full, rel=2e-4)


def test_mirrored_replicas_end_with_identical_weights(tmp_path):
    _, info = run(tmp_path, "mirrored", k=1, steps=3, overrides=MIRRORED)
    for per_replica in info["replica_values"]:
        assert len(per_replica) == 2
        assert np.array_equal(np.array(per_replica[0]), np.array(per_replica[1]))


def test_gpu_requested_without_gpu_is_a_clear_error():
    pytest.importorskip("tensorflow")
    from conductivity_tf import strategies
    from conductivity_tf.errors import UserError
    from conductivity_tf.keras_compat import tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="sees no GPU"):
        strategies.make_strategy(C.load_config(overrides=["hardware.kind=gpu"]).hardware)
