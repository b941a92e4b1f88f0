"""Minecraft VPT reader: camera binning, jsonl key mapping, frames/actions alignment, bad input.
Videos are encoded in the test with PyAV."""

import json
import os
import sys

import numpy as np
import pytest

from data.clips import ClipSettings, open_shard, prepare_clips
from data.episode import DataError, SkippedDataWarning
from data.sources import episode_splits
from data.vpt import VPT_BUTTONS, camera_bins, camera_class, jsonl_actions, vpt_episodes

av = pytest.importorskip("av")

CENTRE = 60  # camera class of no movement: 11 * 5 + 5


def write_video(path, length, size=(36, 64), options=None):
    """Frame t: left half red 8t, right half green 255 - 8t (H.264, 20 fps, a key frame every
    4 frames so that reads seek)."""
    height, width = size
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("libx264", rate=20, options={"g": "4"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(length):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : width // 2, 0] = 8 * t
            image[:, width // 2 :, 1] = 255 - 8 * t
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def line(keys=(), dx=0, dy=0, buttons=(), new_buttons=(), hotbar=0):
    """One jsonl record as VPT writes it (fields this reader ignores included)."""
    mouse = {"x": 320.0, "y": 180.0, "dx": dx, "dy": dy, "scaledX": 0.0, "scaledY": 0.0,
             "dwheel": 0.0, "buttons": list(buttons), "newButtons": list(new_buttons)}  # fmt: skip
    keyboard = {"keys": list(keys), "newKeys": [], "chars": ""}
    record = {"mouse": mouse, "keyboard": keyboard, "isGuiOpen": False, "hotbar": hotbar,
              "yaw": 0.0, "pitch": 0.0, "tick": 0}  # fmt: skip
    return json.dumps(record) + "\n"


def write_segment(folder, name, length):
    """Line t: forward held when t is even, hotbar key (t % 9) + 1 pressed, mouse dx = t pixels."""
    write_video(folder / f"{name}.mp4", length)
    lines = [line([f"key.keyboard.{t % 9 + 1}"] + ["key.keyboard.w"] * (t % 2 == 0), dx=t)
             for t in range(length)]  # fmt: skip
    (folder / f"{name}.jsonl").write_text("".join(lines))


def mu_law_bin(degrees):
    """The VPT camera bin, written out in float64."""
    x = min(max(degrees, -10.0), 10.0) / 10.0
    encoded = np.sign(x) * np.log(1.0 + 10.0 * abs(x)) / np.log(11.0) * 10.0
    return int(np.round((encoded + 10.0) / 2.0))


def test_camera_classes_match_float64_mu_law():
    pixels = np.concatenate([np.arange(-120, 121), np.linspace(-70, 70, 301)])
    expected = [mu_law_bin(p * 360.0 / 2400.0) for p in pixels]
    np.testing.assert_array_equal(camera_bins(pixels * 360.0 / 2400.0), expected)
    # By hand: 1 px = 0.15 deg -> bin 5 (still); 2 px -> 0.3 deg -> v = 1.094 -> 5.55 -> 6;
    # 10 px -> 1.5 deg -> v = 3.82 -> 6.91 -> 7; beyond +-10 deg (67 px) the end bins 0 and 10.
    dx = np.array([0, 1, 2, -2, 10, -10, 67, -100, 1000])
    np.testing.assert_array_equal(camera_bins(dx * 0.15), [5, 5, 6, 4, 7, 3, 10, 0, 10])
    np.testing.assert_array_equal(camera_class(dx, 0 * dx), 55 + camera_bins(dx * 0.15))
    assert camera_class(0, 0) == CENTRE and camera_class(10, -100) == 7  # pitch 0, yaw 7
    assert camera_class(-100, 67) == 110 and set(camera_class(pixels, pixels[::-1])) <= set(
        range(121)
    )


def test_jsonl_keys_buttons_hotbar_and_stuck_attack(tmp_path):
    assert VPT_BUTTONS == (
        "attack", "back", "forward", "jump", "left", "right", "sneak", "sprint", "use", "drop",
        "inventory", "hotbar.1", "hotbar.2", "hotbar.3", "hotbar.4", "hotbar.5", "hotbar.6",
        "hotbar.7", "hotbar.8", "hotbar.9", "ESC", "swapHands", "pickItem",
    )  # fmt: skip
    path = tmp_path / "a.jsonl"
    path.write_text(
        # attack held from before the recording (newButtons == [0] on the first line): dropped
        line(["key.keyboard.w", "key.keyboard.left.shift", "key.keyboard.z"], buttons=[0],
             new_buttons=[0])
        + "\n"  # blank lines are not records
        + line(["key.keyboard.space", "key.keyboard.3", "key.mouse.left"], dx=10, dy=-100,
               buttons=[0, 1])
        # attack pressed anew: counts again; the hotbar slot changed (scroll wheel) 0 -> 4
        + line(buttons=[0], new_buttons=[0], hotbar=4)
        + line(["key.keyboard.escape", "key.keyboard.f", "key.keyboard.e", "key.keyboard.q",
                "key.keyboard.s", "key.keyboard.a", "key.keyboard.d",
                "key.keyboard.left.control"], buttons=[2], hotbar=4)
    )  # fmt: skip
    expected = [
        (["forward", "sneak"], CENTRE),
        (["jump", "hotbar.3", "use"], 7),
        (["attack", "hotbar.5"], CENTRE),
        (["ESC", "swapHands", "inventory", "drop", "back", "left", "right", "sprint",
          "pickItem"], CENTRE),
    ]  # fmt: skip
    actions = jsonl_actions(str(path))
    assert actions.dtype == np.int32 and actions.shape == (4, 24)
    for row, (names, camera) in zip(actions, expected, strict=True):
        assert sorted(VPT_BUTTONS[i] for i in np.flatnonzero(row[:23])) == sorted(names)
        assert row[23] == camera


def test_vpt_reader_frames_and_actions_aligned(tmp_path):
    write_segment(tmp_path, "seg_b", 30)
    write_segment(tmp_path, "seg_a", 12)
    (tmp_path / "notes.txt").write_text("not a segment")
    first, second = vpt_episodes(str(tmp_path), frame_size=(18, 32))
    assert (first.name, first.length, second.name, second.length) == ("seg_a", 12, "seg_b", 30)
    assert second.action_layout.kind == "multipart" and second.action_layout.shape == (24,)
    frames, actions = second.read(13, 20)  # starts between key frames
    assert frames.shape == (7, 18, 32, 3) and frames.dtype == np.uint8
    t = np.arange(13, 20)
    np.testing.assert_allclose(frames[:, 9, 4, 0], 8 * t, atol=4)  # H.264 is lossy
    np.testing.assert_allclose(frames[:, 9, 28, 1], 255 - 8 * t, atol=4)
    assert actions.dtype == np.int32
    np.testing.assert_array_equal(actions[:, VPT_BUTTONS.index("forward")], t % 2 == 0)
    hotbar = actions[:, VPT_BUTTONS.index("hotbar.1") : VPT_BUTTONS.index("hotbar.9") + 1]
    np.testing.assert_array_equal(hotbar.argmax(1), t % 9)
    np.testing.assert_array_equal(actions[:, 23], camera_class(t, 0 * t))
    default = vpt_episodes(str(tmp_path))[0]  # 224x384 unless told
    assert default.frame_size == (224, 384)
    assert default.read(0, 2).frames.shape == (2, 224, 384, 3)


def test_vpt_clips_through_episode_splits(tmp_path):
    source = tmp_path / "vpt"
    os.makedirs(source)
    for name in ("s0", "s1", "s2"):
        write_segment(source, name, 10)
    splits = episode_splits("vpt", str(source), eval_fraction=0.34, frame_size=(18, 32))
    assert [len(splits["train"]), len(splits["eval"])] == [2, 1]
    index = prepare_clips(splits, str(tmp_path / "clips"), ClipSettings(8, 8), progress=False)
    assert index["plan"]["frame_size"] == [18, 32]
    assert index["plan"]["action"] == {"kind": "multipart", "shape": [24], "dtype": "int32"}
    shard = open_shard(str(tmp_path / "clips" / "eval" / "shard_000000"))
    assert shard["frames"].shape == (2, 8, 18, 32, 3)  # starts 0 and 2 of a 10-frame segment
    np.testing.assert_array_equal(shard["actions"][1, :, 23], camera_class(np.arange(2, 10), 0))


def test_vpt_bad_input_names_files_and_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such folder"):
        vpt_episodes(str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"no \.mp4 segments"):
        vpt_episodes(str(tmp_path))
    write_segment(tmp_path, "good", 8)
    write_video(tmp_path / "alone.mp4", 8)
    with pytest.raises(DataError, match=r"alone\.mp4: no alone\.jsonl beside it"):
        vpt_episodes(str(tmp_path))
    (tmp_path / "alone.jsonl").write_text(line() * 7)
    with pytest.raises(DataError, match=r"alone\.jsonl: 7 action lines, but .*alone\.mp4 has 8"):
        vpt_episodes(str(tmp_path))
    (tmp_path / "alone.jsonl").write_text(line() * 8)
    valid = (tmp_path / "alone.mp4").read_bytes()
    (tmp_path / "alone.mp4").write_bytes(valid[: len(valid) // 2])  # index at the end: lost
    with pytest.raises(
        DataError, match=r"alone\.mp4: (no video stream|not a readable video).*trunc"
    ):
        vpt_episodes(str(tmp_path))
    (tmp_path / "alone.mp4").write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match=r"alone\.mp4: not a readable video.*corrupt"):
        vpt_episodes(str(tmp_path))
    with pytest.warns(SkippedDataWarning, match="skipped 1 of 2 VPT segments"):
        assert [e.name for e in vpt_episodes(str(tmp_path), skip_bad=True)] == ["good"]
    os.remove(tmp_path / "alone.mp4")

    # Index at the front: the header promises 30 frames that the truncated file lacks.
    write_video(tmp_path / "cut.mp4", 30, options={"movflags": "faststart"})
    (tmp_path / "cut.jsonl").write_text(line() * 30)
    valid = (tmp_path / "cut.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(valid[: len(valid) // 2])
    cut = vpt_episodes(str(tmp_path))[0]
    assert cut.name == "cut" and cut.length == 30
    with pytest.raises(DataError, match=r"cut\.mp4: (cannot decode|only \d+ of the 30).*truncated"):
        cut.read(0, 30)
    (tmp_path / "good.jsonl").write_text(line() * 2 + '{"mouse": {}}\n' + line() * 5)
    good = vpt_episodes(str(tmp_path))[1]
    with pytest.raises(DataError, match=r"good\.jsonl: line 3 is not a VPT action record"):
        good.read(0, 8)

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match="pip install av"):
        vpt_episodes(str(tmp_path))
