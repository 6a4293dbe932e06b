"""Checkpoints of the whole training state: interrupted and resumed runs equal straight ones."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.train import checkpoint, embed

from tiny_embed import B, C, N, SIZE, tiny_cfg  # tests/tiny_embed.py


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(C), N // C).astype(np.int32)
    images = np.clip(rng.normal(100, 40, size=(N, SIZE, SIZE, 3)) + labels[:, None, None, None] * 20, 0, 255)
    return {"images": images.astype(np.uint8), "labels": labels}


@pytest.fixture(scope="module")
def variables():
    return embed.init_variables(embed.build_model(tiny_cfg("snca-ce-mu"), C), SIZE, seed=0)


def _assert_same(a, b, atol=1e-6):
    la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_steps_straight_equal_save_restore_continue(tmp_path, data, variables):
    """N = 5 steps straight == 2 steps, save, restore into a fresh state object, 3 steps
    (SNCA-CE(MU): bank, momentum encoder, its batch statistics and optimiser state included)."""
    cfg = tiny_cfg("snca-ce-mu", shuffle_bn=True)
    model = embed.build_model(cfg, C)
    tx = embed.make_optimizer(cfg, N // B)
    step = embed.compile_step(embed.make_step(cfg, model, tx))
    x = jnp.asarray(data["images"], jnp.float32) / 255.0
    y = jnp.asarray(data["labels"])
    order = np.random.default_rng(1).permutation(N)
    batches = [order[(t % 4) * B:(t % 4 + 1) * B] for t in range(5)]

    def run(state, ts):
        for t in ts:
            i = batches[t]
            state, _ = step(state, x[i], y[i], jnp.asarray(i, jnp.int32), jnp.int32(t // 4))
        return state

    straight = run(embed.create_state(cfg, variables, tx, data["labels"]), range(5))
    part = run(embed.create_state(cfg, variables, tx, data["labels"]), range(2))
    checkpoint.save(tmp_path / "ckpt", part)
    fresh = embed.create_state(cfg, variables, tx, data["labels"], seed=123)   # another bank
    assert not np.allclose(np.asarray(fresh.bank), np.asarray(part.bank))
    restored = checkpoint.restore(tmp_path / "ckpt", like=fresh)
    assert isinstance(restored, embed.EmbedState) and int(restored.step) == 2
    _assert_same(restored, part, atol=0)
    resumed = run(restored, range(2, 5))
    assert int(resumed.step) == 5
    _assert_same(resumed, straight)


def test_train_loop_resumes_from_latest_checkpoint(tmp_path, data, variables, capsys):
    """train(2 epochs) == train(1 epoch) then train(2 epochs) in the same workdir, with augmentation
    and the kNN validation callback; checkpoints are pruned to the newest ones."""
    from rsjax.data.augment import augment
    cfg = tiny_cfg("snca-ce-mb", epochs=2, keep_checkpoints=1, log_every=2)
    aug = functools.partial(augment, size=SIZE)
    model = embed.build_model(cfg, C)
    val = embed.knn_val_fn(model, data["images"][:12], data["labels"][:12], k=3, batch_size=8)
    common = dict(augment=aug, val_fn=val, progress=False, variables=variables)

    straight = embed.train(cfg, data, workdir=tmp_path / "a", **common)
    assert [h["epoch"] for h in straight["history"]] == [0, 1]
    assert all(0 <= h["val_knn_acc"] <= 1 and np.isfinite(h["loss"]) for h in straight["history"])

    first = embed.train(tiny_cfg("snca-ce-mb", epochs=1, keep_checkpoints=1), data, workdir=tmp_path / "b", **common)
    assert int(first["state"].step) == N // B
    (tmp_path / "b" / "checkpoints" / "epoch_0002.orbax-checkpoint-tmp-1").mkdir()  # an interrupted save
    capsys.readouterr()
    resumed = embed.train(cfg, data, workdir=tmp_path / "b", **common)
    assert "resuming after epoch 1 of 2" in capsys.readouterr().err
    assert int(resumed["state"].step) == 2 * (N // B)
    _assert_same(resumed["state"], straight["state"])
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in straight["history"]], rtol=1e-6)
    assert embed.latest_checkpoint(tmp_path / "b")[0] == 2
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["epoch_0002"]

    again = embed.train(cfg, data, workdir=tmp_path / "b", **common)   # nothing left to do
    assert "already trained (2 epochs)" in capsys.readouterr().err
    assert int(again["state"].step) == 2 * (N // B)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["epochs"] == 2   # as the run now is
    with pytest.raises(ValueError, match="holds a run of 2 epochs, more than the 1 asked for"):
        embed.train(tiny_cfg("snca-ce-mb", epochs=1, keep_checkpoints=1), data, workdir=tmp_path / "b", **common)

    # resuming with settings other than the run's is refused, naming them; nothing is trained
    with pytest.raises(ValueError, match=r"other settings \(lr: 0\.05 -> 0\.1; sigma: 0\.1 -> 0\.2\).*another directory"):
        embed.train(tiny_cfg("snca-ce-mb", epochs=3, lr=0.1, sigma=0.2), data, workdir=tmp_path / "b", **common)
    assert embed.latest_checkpoint(tmp_path / "b")[0] == 2


def test_a_run_is_not_resumed_on_other_training_images(tmp_path, data, variables):
    """The bank holds a row per training image: resuming on other images (more, fewer, or as many with other
    content) is refused before any step, naming both; a run made before training_set.json is checked by its
    bank's rows and labels."""
    common = dict(progress=False, variables=variables)
    embed.train(tiny_cfg("snca-ce-mb", epochs=1), data, workdir=tmp_path, **common)
    more = {"images": np.concatenate([data["images"], data["images"][:8]]),
            "labels": np.concatenate([data["labels"], data["labels"][:8]])}
    other = {"images": 255 - data["images"], "labels": data["labels"]}
    for changed, says in ((more, r"32 images, sha1 \w+; now 40, sha1"), (other, r"32 images, sha1 \w+; now 32, sha1")):
        with pytest.raises(ValueError, match=rf"{tmp_path} holds a run trained on other images \({says}.*another "
                                             "directory"):
            embed.train(tiny_cfg("snca-ce-mb", epochs=2), changed, workdir=tmp_path, **common)
    assert embed.latest_checkpoint(tmp_path)[0] == 1                 # nothing trained
    (tmp_path / embed.TRAINING_SET_FILE).unlink()                     # as a run made before the file
    with pytest.raises(ValueError, match=r"trained on other images \(32 images; now 40\)"):
        embed.train(tiny_cfg("snca-ce-mb", epochs=2), more, workdir=tmp_path, **common)
    shuffled = {"images": data["images"], "labels": np.roll(data["labels"], 1)}
    with pytest.raises(ValueError, match=r"trained on other images \(32 images; now 32, other labels\)"):
        embed.train(tiny_cfg("snca-ce-mb", epochs=2), shuffled, workdir=tmp_path, **common)
    resumed = embed.train(tiny_cfg("snca-ce-mb", epochs=2), data, workdir=tmp_path, **common)   # the same data
    assert int(resumed["state"].step) == 2 * (N // B) and (tmp_path / embed.TRAINING_SET_FILE).exists()


def test_config_conflicts_ignores_resumable_and_newer_fields():
    stored = json.loads(tiny_cfg("snca-ce-mb").to_json())
    assert embed.config_conflicts(stored, tiny_cfg("snca-ce-mb", epochs=50, log_every=1, keep_checkpoints=5)) == []
    del stored["margin"]                                   # a field rsjax gained after the run was made
    assert embed.config_conflicts(stored, tiny_cfg("snca-ce-mb", margin=0.3)) == []
    stored["num_classes"] = 4                              # set from the data when the run was made
    assert embed.config_conflicts(stored, tiny_cfg("snca-ce-mb")) == []
    assert embed.config_conflicts(stored, tiny_cfg("snca-ce-mb", num_classes=5)) == ["num_classes: 4 -> 5"]
    assert embed.config_conflicts(stored, tiny_cfg("snca-ce-mb", batch_size=4, dim=16)) == [
        "batch_size: 8 -> 4", "dim: 8 -> 16"]


def test_bank_momentum_schedules_compare_as_far_as_they_act():
    """A schedule step at or past the run's last epoch, or in a method without an MB bank, changes
    nothing, so it is no conflict; one that acts is."""
    from rsjax.configs import parse_m_schedule
    code = parse_m_schedule("80:0.8,120:0.9")
    assert code == ((80, 120), (0.8, 0.9)) and parse_m_schedule("none") == ((), ())
    with pytest.raises(ValueError, match="increasing epochs"):
        parse_m_schedule("120:0.9,80:0.8")

    def cfg(method, epochs, schedule):
        c = tiny_cfg(method, epochs=epochs)
        c.m_schedule_epochs, c.m_schedule_values = schedule
        return c

    stored = json.loads(cfg("snca-ce-mb", 30, code).to_json())          # a 30-epoch run, the code's schedule
    assert embed.config_conflicts(stored, cfg("snca-ce-mb", 30, ((), ()))) == []
    assert embed.config_conflicts(stored, cfg("snca-ce-mb", 100, ((), ()))) == [
        "m_schedule_epochs: [80] -> []", "m_schedule_values: [0.8] -> []"]
    assert embed.config_conflicts(stored, cfg("snca-ce-mb", 100, code)) == []
    stored_mu = json.loads(cfg("snca-ce-mu", 100, code).to_json())
    assert embed.config_conflicts(stored_mu, cfg("snca-ce-mu", 100, ((), ()))) == []


@pytest.mark.parametrize("method,least", [("triplet", 3), ("dcnn", 2)])
def test_pair_and_triplet_losses_need_a_batch_that_holds_some(tmp_path, data, method, least):
    with pytest.raises(ValueError, match=f"a batch of {least - 1} has none; use a batch size of {least} or more"):
        embed.train(tiny_cfg(method, batch_size=least - 1), data, workdir=tmp_path, progress=False)


def test_unknown_config_names_are_named_with_the_known_ones():
    from rsjax import configs
    with pytest.raises(ValueError, match=r"no config named 'kmeans'; known: ce, dcnn, ms2anet.*get\('ms2anet'\)"):
        configs.get("kmeans")


def test_training_data_of_the_wrong_form_is_named(tmp_path, data):
    cfg = tiny_cfg("ce")
    with pytest.raises(ValueError, match=r"labels must be \(32,\) integers of 0 or more.*from -1"):
        embed.train(cfg, (data["images"], data["labels"] - 1), workdir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, 3\) RGB, got shape \(32, 16, 16\)"):
        embed.train(cfg, (data["images"][..., 0], data["labels"]), workdir=tmp_path, progress=False)
    cfg.num_classes = C - 1
    with pytest.raises(ValueError, match=rf"labels span \[0, {C - 1}\] but cfg.num_classes is {C - 1}.*set num_classes "
                                         rf"to {C} \(or 0: from the labels\)"):
        embed.train(cfg, data, workdir=tmp_path, progress=False)
