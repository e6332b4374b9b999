"""Cloud Run's resource rules as localcloud reads them, the seccomp profile it compiles and
the port list it hands pasta."""

from __future__ import annotations

import pytest

from localcloud.core.config import Config, ConfigError
from localcloud.core.errors import InvalidArgument
from localcloud.run import network, resources, seccomp

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("values", "memory", "cpu"),
    [
        ({}, 512 * MIB, 1.0),  # Cloud Run's defaults
        ({"memory": "128Mi"}, 128 * MIB, 1.0),
        ({"memory": "1Gi", "cpu": "2"}, 1024 * MIB, 2.0),
        ({"memory": "2G", "cpu": "1000m"}, 2 * 1000**3, 1.0),
        ({"memory": "256Mi", "cpu": "0.5"}, 256 * MIB, 0.5),
        ({"memory": "32Gi", "cpu": "8"}, 32 * 1024 * MIB, 8.0),
    ],
)
def test_limits_google_accepts(values, memory, cpu):
    got = resources.limits(values)
    assert (got.memory, got.cpu) == (memory, cpu)
    assert got.pids == resources.PIDS


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"memory": "lots"}, "limits.memory"),
        ({"memory": "64Mi"}, "128Mi to 32Gi"),
        ({"memory": "33Gi", "cpu": "8"}, "128Mi to 32Gi"),
        ({"cpu": "3"}, "limits.cpu"),
        ({"cpu": "12"}, "limits.cpu"),
        ({"cpu": "one"}, "limits.cpu"),
        ({"memory": "5Gi", "cpu": "1"}, "at least 2 CPUs"),
        ({"memory": "17Gi", "cpu": "4"}, "at least 6 CPUs"),
        ({"disk": "1Gi"}, "unknown resource 'disk'"),
    ],
)
def test_limits_google_refuses_are_refused_naming_the_field(values, named):
    with pytest.raises(InvalidArgument, match=named):
        resources.limits(values)


def test_pasta_gets_ranges_for_consecutive_ports():
    assert network._spec([8085, 4443, 8100, 8101, 8102, 9000]) == "4443,8085,8100-8102,9000"
    assert network._spec([]) == "none"


@pytest.mark.skipif(seccomp.profile_path() is None, reason="no container seccomp profile here")
def test_the_default_container_profile_compiles_to_bpf():
    program = seccomp.compiled()
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes an instruction


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("LOCALCLOUD_RUN_ISOLATION", "none", "LOCALCLOUD_RUN_ISOLATION must be one of full"),
        ("LOCALCLOUD_RUN_HOST_PORTS", "5432,db", "LOCALCLOUD_RUN_HOST_PORTS must be a comma"),
        ("LOCALCLOUD_RUN_HOST_PORTS", "70000", "LOCALCLOUD_RUN_HOST_PORTS: ports are between"),
        ("LOCALCLOUD_RUN_SPARES", "sometimes", "LOCALCLOUD_RUN_SPARES"),
    ],
)
def test_bad_sandbox_settings_are_named(name, value, named):
    with pytest.raises(ConfigError, match=named):
        Config.from_env({name: value})


def test_sandbox_settings_are_read():
    cfg = Config.from_env(
        {
            "LOCALCLOUD_RUN_ISOLATION": "Filesystem",
            "LOCALCLOUD_RUN_HOST_PORTS": "5432, 6379",
            "LOCALCLOUD_RUN_SPARES": "false",
        }
    )
    assert (cfg.run_isolation, cfg.run_host_ports) == ("filesystem", (5432, 6379))
    assert not cfg.run_spares and Config.from_env({}).run_spares
