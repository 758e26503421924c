"""Drives the hcloud simulator with the official Python client (`hcloud` from PyPI), unmodified.

Environment: HCLOUD_TOKEN, HCLOUD_ENDPOINT, PUBLIC_KEY (an OpenSSH public key line).
Exits non-zero with a message on the first mismatch; prints OK at the end.
"""

import os
import sys
import time

from hcloud import Client
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    # The simulator runs 1000x faster than real time: poll often, as a client of a fast API would.
    client = Client(
        token=os.environ["HCLOUD_TOKEN"],
        api_endpoint=os.environ["HCLOUD_ENDPOINT"],
        poll_interval=0.02,
        poll_max_retries=1000,
    )

    server_types = client.server_types.get_all()
    check(any(t.name == "cx23" for t in server_types), "cx23 is offered")
    cx23 = client.server_types.get_by_name("cx23")
    check(cx23.architecture == "x86", "cx23 is x86")
    check(all(place.available is not None for place in cx23.locations), "locations carry availability")
    check({l.name for l in client.locations.get_all()} >= {"fsn1", "nbg1", "hel1"}, "EU locations")
    arm_debian = client.images.get_by_name_and_architecture("debian-12", "arm")
    check(arm_debian is not None and arm_debian.architecture == "arm", "debian-12 for arm")

    key = client.ssh_keys.create(
        name="fidelity-key", public_key=os.environ["PUBLIC_KEY"], labels={"purpose": "fidelity"}
    )
    check(key.fingerprint and key.fingerprint.count(":") == 15, "MD5 fingerprint")

    created = client.servers.create(
        name="fidelity-1",
        server_type=ServerType(name="cx23"),
        image=Image(name="debian-12"),
        location=Location(name="fsn1"),
        ssh_keys=[key],
        labels={"purpose": "fidelity"},
    )
    check(created.server.status == "initializing", "new server is initializing")
    check(created.root_password is None, "no root password with SSH keys")
    created.action.wait_until_finished()
    for action in created.next_actions:
        action.wait_until_finished()
    server = client.servers.get_by_id(created.server.id)
    check(server.status == "running", f"server is running, not {server.status}")
    check(server.public_net.ipv4.ip.startswith("127."), "loopback address")
    check(server.server_type.name == "cx23", "server type")
    check(server.labels == {"purpose": "fidelity"}, "labels")

    client.servers.shutdown(server).wait_until_finished()
    for _ in range(500):
        server.reload()
        if server.status == "off":
            break
        time.sleep(0.01)
    check(server.status == "off", f"server is off, not {server.status}")

    snapshot = client.servers.create_image(
        server,
        description="fidelity snapshot",
        type="snapshot",
        labels={"caph-image-name": "fidelity", "version": "v1"},
    )
    check(snapshot.image.status == "creating", "snapshot starts creating")
    snapshot.action.wait_until_finished()

    found = client.images.get_all(
        label_selector="caph-image-name==fidelity,version in (v1,v2)",
        architecture=["x86"],
        type=["snapshot"],
    )
    check(len(found) == 1, f"one x86 snapshot, found {len(found)}")
    image = found[0]
    check(image.status == "available", "snapshot available")
    check(image.image_size is not None and image.image_size > 0, "image_size set")
    check(image.disk_size == 40, "disk size of the source server")
    check(image.created_from.id == server.id, "created_from")
    check(image.architecture == "x86", "architecture copied")
    none_arm = client.images.get_all(label_selector="caph-image-name=fidelity", architecture=["arm"])
    check(none_arm == [], "no arm snapshot")

    check(client.images.delete(image) is True, "image deleted")
    client.servers.delete(server).wait_until_finished()
    client.ssh_keys.delete(key)
    check(client.servers.get_all() == [], "no servers left")
    check(client.ssh_keys.get_all() == [], "no keys left")
    check(client.images.get_all(type=["snapshot"]) == [], "no snapshots left")
    print("OK")


if __name__ == "__main__":
    main()
