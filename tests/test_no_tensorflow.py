"""The model, the steps, the metrics and the step benchmark import and run with TensorFlow absent
(as on a GPU host without it): a subprocess whose every `tensorflow*` import fails."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib.abc, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].startswith("tensorflow"):
            raise ImportError(f"{name} is blocked: TensorFlow is absent here")
        return None

sys.meta_path.insert(0, NoTensorFlow())
sys.path.insert(0, "bench")

import jax, jax.numpy as jnp, numpy as np
import pml_jax.metrics, pml_jax.models, pml_jax.train.learner, pml_jax.train.steps
import train_step
from pml_jax.models import Classifier, LinearHead, ResNet
from pml_jax.train.groups import decay_mask, param_groups, split_trainable, trainable_mask
from pml_jax.train.optim import fastai_adam
from pml_jax.train.steps import TrainState, make_eval_step, make_train_step

model = Classifier(ResNet("basic", (1, 1, 1, 1), None), LinearHead(3))
variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
params, stats = variables["params"], variables["batch_stats"]
trainable = trainable_mask(params, stats, frozen=False)
tx = fastai_adam(param_groups(params), decay_mask(params, stats))
batch = train_step.random_batch(2, 32, n_out=3)
state = TrainState(params, stats, tx.init(split_trainable(params, trainable)[0]))
state, loss = make_train_step(model, tx, trainable)(state, batch, jnp.full((3,), 1e-3), jnp.float32(0.9),
                                                    jax.random.key(1))
probs, losses = make_eval_step(model)(state.params, state.batch_stats, batch)
acc = pml_jax.metrics.accuracy_multi(probs, batch["target"])
assert np.isfinite(float(loss)) and probs.shape == (2, 3) and losses.shape == (2,) and 0 <= float(acc) <= 1
try:
    import tensorflow  # noqa: F401
    raise SystemExit("the TensorFlow block failed")
except ImportError:
    pass
print(sorted(m for m in sys.modules if m.startswith("tensorflow")))
"""


def test_model_steps_metrics_and_step_bench_run_without_tensorflow():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_pipelines_tensorflow_loads_without_keras_and_leaves_it_importable():
    """import_tf refuses TensorFlow's eager Keras import (~1 s), tf.data and the image ops work, and a
    later `import keras` (and tf.keras) still loads."""
    script = """
import sys
from pml_jax.data.tf_cpu import import_tf
tf = import_tf()
print(sorted(m for m in sys.modules if m == "keras" or m.startswith("keras.")))
print(list(tf.data.Dataset.range(3).map(lambda x: x + 1).as_numpy_iterator()),
      tuple(tf.image.resize(tf.zeros([4, 4, 3]), [2, 2]).shape))
import keras
print(keras.__name__, tf.keras.layers.Dense.__name__)
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-3:] == ["[]", "[np.int64(1), np.int64(2), np.int64(3)] (2, 2, 3)", "keras Dense"]
