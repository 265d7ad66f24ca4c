"""The per-profile OS flow keys of ``provision.profiles[]``: defaults, values, and every
mistake reported with its key path."""

from __future__ import annotations

import pytest
from flow_helpers import FLOW_PROFILES

from pxestack.config import load_config
from pxestack.errors import ConfigError
from pxestack.provision.flows import flow_for


def _profiles(*profiles):
    return load_config({"provision": {"profiles": list(profiles)}}).provision.profiles


def _problems(*profiles):
    with pytest.raises(ConfigError) as caught:
        load_config({"provision": {"profiles": list(profiles)}})
    return {(p.path, p.message) for p in caught.value.problems}


def test_defaults_are_mayus_flatcar_install_to_disk():
    (profile,) = _profiles({"name": "core"})
    assert (profile.os, profile.install, profile.install_disk) == ("flatcar", "disk", "")
    assert profile.flatcar.image_source == "cache" and profile.generic is None
    assert flow_for(profile).name == "flatcar-disk"
    assert flow_for(None).name == "flatcar-disk"  # the implicit "default" profile


def test_every_shipped_flow_profile_loads():
    profiles = _profiles(*FLOW_PROFILES)
    assert [flow_for(p).name for p in profiles] == [
        "flatcar-disk", "flatcar-pxe", "fcos-disk", "fcos-pxe", "generic-disk", "generic-pxe",
    ]
    generic = profiles[4].generic
    assert generic.image_os == "debian" and generic.initrd == ("initrd.gz",)


@pytest.mark.parametrize(
    ("profile", "path", "fragment"),
    [
        ({"os": "windows"}, "provision.profiles[0].os", "is not one of"),
        ({"os": "fcos"}, "provision.profiles[0].os_version", "is required for os: fcos"),
        ({"install_disk": "sda"}, "provision.profiles[0].install_disk", "/dev/"),
        ({"install_disk": "/dev/sda;reboot"}, "provision.profiles[0].install_disk", "/dev/"),
        ({"flatcar": {"image_source": "usb"}}, "provision.profiles[0].flatcar.image_source",
         "is not one of"),
        ({"flatcar": {"channel": "beta"}}, "provision.profiles[0].flatcar.channel",
         "only used with image_source: release"),
        ({"flatcar": {"image_source": "release", "channel": "Beta!"}},
         "provision.profiles[0].flatcar.channel", "channel name"),
        ({"flatcar": {"image_source": "release", "base_url": "ftp://x"}},
         "provision.profiles[0].flatcar.base_url", "http"),
        ({"flatcar": {"colour": 1}}, "provision.profiles[0].flatcar.colour", "unknown key"),
        ({"os": "fcos", "os_version": "41", "flatcar": {}}, "provision.profiles[0].flatcar",
         "only used with os: flatcar"),
        ({"os": "generic", "os_version": "1"}, "provision.profiles[0].generic", "is required"),
        ({"generic": {"kernel": "k"}}, "provision.profiles[0].generic",
         "only used with os: generic"),
        ({"os": "generic", "os_version": "1", "generic": {}},
         "provision.profiles[0].generic.kernel", "is required"),
        ({"os": "generic", "os_version": "1", "generic": {"kernel": "../vmlinuz"}},
         "provision.profiles[0].generic.kernel", "plain file name"),
        ({"os": "generic", "os_version": "1", "generic": {"kernel": "http://x/a b"}},
         "provision.profiles[0].generic.kernel", "iPXE"),
        ({"os": "generic", "os_version": "1", "generic": {"kernel": "k", "initrd": ["a/b"]}},
         "provision.profiles[0].generic.initrd[0]", "plain file name"),
        ({"os": "generic", "os_version": "1", "generic": {"kernel": "k", "cmdline": ["a b"]}},
         "provision.profiles[0].generic.cmdline[0]", "one kernel argument"),
        ({"os": "generic", "os_version": "1",
          "generic": {"kernel": "k", "cmdline": ["x=$password"]}},
         "provision.profiles[0].generic.cmdline[0]", "one kernel argument"),
        ({"os": "generic", "os_version": "1",
          "generic": {"kernel": "k", "cmdline": ["x={token}"]}},
         "provision.profiles[0].generic.cmdline[0]", "unknown placeholder {token}"),
        ({"os": "generic", "os_version": "1", "generic": {"kernel": "k", "script": "x.txt"}},
         "provision.profiles[0].generic.script", ".sh.j2 or .yaml.j2"),
        ({"os": "generic", "os_version": "1",
          "generic": {"kernel": "k", "script": "../../etc/x.sh.j2"}},
         "provision.profiles[0].generic.script", ".sh.j2 or .yaml.j2"),
        ({"os": "generic", "os_version": "1", "generic": {"kernel": "k", "image_os": "Deb/ian"}},
         "provision.profiles[0].generic.image_os", "OS directory"),
    ],
)
def test_mistakes_name_their_key_path(profile, path, fragment):
    problems = _problems({"name": "p", **profile})
    assert any(p == path and fragment in m for p, m in problems), problems
