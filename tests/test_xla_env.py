"""omnihuman_jax.xla_env: the XLA:CPU flags the entry points add, and how users keep their own."""

from omnihuman_jax import xla_env


def test_cpu_flags_are_added_to_empty_or_unrelated_xla_flags():
    assert xla_env.with_cpu_flags("") == xla_env.CPU_XLA_FLAGS
    out = xla_env.with_cpu_flags("--xla_force_host_platform_device_count=8")
    assert out.split() == ["--xla_force_host_platform_device_count=8", *xla_env.CPU_XLA_FLAGS.split()]


def test_a_flag_the_user_set_wins_and_is_not_repeated():
    mine = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise"
    assert xla_env.with_cpu_flags(mine) == mine


def test_apply_is_idempotent_and_honours_the_opt_out():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    once = xla_env.apply(env, jaxlib="0.10.2")
    assert xla_env.apply(env, jaxlib="0.10.2") == once == env["XLA_FLAGS"]
    assert xla_env.CPU_XLA_FLAGS in once
    opted_out = {xla_env.OPT_OUT: "0", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert xla_env.apply(opted_out, jaxlib="0.10.2") == "--xla_dump_to=/tmp/x"
    assert xla_env.apply({xla_env.OPT_OUT: "0"}, jaxlib="0.10.2") == ""


def test_flags_are_left_out_under_a_jaxlib_they_were_not_measured_with():
    # XLA aborts on an unknown flag, so a newer jaxlib that dropped it must not get it.
    for version in ("0.11.0", "0.9.2", ""):
        env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
        assert xla_env.apply(env, jaxlib=version) == "--xla_dump_to=/tmp/x"
