"""Role bpfdeploy.ebpf.install over SSH: the wheel built on the controller, installed into a venv on
a host, and the modules working with that venv's python. It costs about two minutes on this VM
(pip wheel of bpfdeploy and its dependencies, then the install), so it runs only when asked:
BPFDEPLOY_FLEET_INSTALL=1 (make fleet-install). Debian packages are not touched here
(bpfdeploy_manage_packages: false): the simulated hosts share the machine's dpkg database."""

from __future__ import annotations

import os

import pytest

from tests.fleet.fleet import DATA, REPO, summary_of

pytestmark = [pytest.mark.fleet, pytest.mark.kernel,
              pytest.mark.skipif(os.environ.get("BPFDEPLOY_FLEET_INSTALL") != "1",
                                 reason="slow (about 2 min): set BPFDEPLOY_FLEET_INSTALL=1")]


def test_role_install_puts_a_working_bpfdeploy_on_a_host(fleet, tmp_path):
    host = fleet.host(2)
    venv = fleet.dir / "hosts" / host / "venv"
    run = fleet.playbook("../../tests/fleet/data/install.yml",
                         extra={"fleet_venv": str(venv), "bpfdeploy_manage_packages": False,
                                "bpfdeploy_source": str(REPO), "bpfdeploy_wheel_dir": str(tmp_path / "wheels"),
                                # the tasks delegated to the controller need a temporary directory
                                # of their own too (the default is ~/.ansible/tmp)
                                "ansible_remote_tmp": str(fleet.dir / "remote-tmp"),
                                "rollout_hosts": host}, inventory=[], pipelining=True, limit=host)
    assert run.rc == 0, summary_of(run)
    assert (venv / "share/bpfdeploy/schemas/manifest.schema.json").is_file()
    python = {host: {"ansible_python_interpreter": str(venv / "bin/python")}}
    deployed = fleet.playbook("rollout.yml", inventory=[fleet.host_vars("installed-venv", python)], limit=host,
                              extra={"rollout_manifest": str(DATA / "manifests/fleet-v1.yaml"),
                                     "rollout_hosts": host})
    assert deployed.rc == 0, summary_of(deployed)
    assert fleet.traffic(host, 10)["moved"] == 10
    gone = fleet.playbook("destroy.yml", extra={"destroy_deployment": "fleet-counters", "destroy_hosts": host})
    assert gone.rc == 0 and fleet.programs(host) == {}
