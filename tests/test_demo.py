"""The demo's options: one torch thread per eval unless asked, bad values refused by name."""

import argparse

from llava_freepruner.tools.cli import demo, main


def test_cpu_runs_get_one_thread_by_default_and_the_asked_count_otherwise():
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert demo.device_variables("cpu", parser.parse_args([]).threads) == {"FREEPRUNER_DEVICE": "cpu",
                                                                           "OMP_NUM_THREADS": "1"}
    assert demo.device_variables("cpu", parser.parse_args(["--threads", "2"]).threads)["OMP_NUM_THREADS"] == "2"
    assert demo.device_variables("cuda", 1) == {}


def test_a_thread_count_below_one_is_refused(tmp_path, capsys):
    assert main(["demo", "--threads", "0", "--workdir", str(tmp_path / "w")]) == 2
    assert "--threads 0: expected >= 1" in capsys.readouterr().err and not (tmp_path / "w").exists()
