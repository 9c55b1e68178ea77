"""`fedmedlora deploy credentials`: TLS and SuperNode keys for a study, and the commands
that use them (docs/deployment.md walks through the same steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmedlora.cli.common import console, user_errors
from fedmedlora.cli.credentials import create_credentials, link_address, server_hosts

deploy_app = typer.Typer(
    help="Deploy across sites with Flower's Deployment Engine.", no_args_is_help=True
)


@deploy_app.command("credentials")
@user_errors
def credentials(
    out: Annotated[Path, typer.Option(help="folder for the certificates and keys")],
    host: Annotated[
        list[str],
        typer.Option(help="name or IP the SuperLink is reached at (repeat for several)"),
    ],
    site: Annotated[
        list[str] | None, typer.Option(help="a SuperNode to make a key pair for (repeat)")
    ] = None,
    port: Annotated[
        int, typer.Option(help="the SuperLink's port, for the printed commands")
    ] = 8000,
) -> None:
    """Write a study CA, the SuperLink's TLS certificate and one key pair per site.

    Files already in OUT are kept, so run it again with a new --site to add a hospital.
    """
    sites = list(site or [])
    creds = create_credentials(out, list(host), sites)
    # What was done goes to stderr with the warnings; the commands to stdout, so
    # `fedmedlora deploy credentials ... > commands.sh` keeps just them.
    for path in creds.created:
        console.print(f"created {path}", highlight=False, soft_wrap=True)
    for path in creds.kept:
        console.print(f"kept    {path}", highlight=False, soft_wrap=True)
    valid_for = server_hosts(creds.server_cert)
    missing = [h for h in creds.hosts if h not in valid_for]
    if missing:
        console.print(
            f"[yellow]warning:[/] the existing {creds.server_cert} is valid for {valid_for}, "
            f"not {missing}; delete server.pem and server.key to issue a new one"
        )
    link = link_address(creds.hosts[0], port)
    lines = [
        "",
        "# Coordinating centre (keep ca.key offline; ship ca.crt to every machine):",
        f"flower-superlink --host 0.0.0.0 --port {port} "
        f"--ssl-ca-certfile {creds.ca} --ssl-certfile {creds.server_cert} "
        f"--ssl-keyfile {creds.server_key} --enable-supernode-auth",
        "# Register each site's public key (with the study's connection in ~/.flwr/config.toml):",
        *(f"flwr supernode register {creds.site_public_key(s)} study" for s in sites),
        "# At each site (its private key never leaves it):",
        *(
            f"flower-supernode --superlink {link} --root-certificates {creds.ca} "
            f"--auth-supernode-private-key {creds.site_key(s)} "
            f"--node-config \"site-config='/data/fedmedlora/site.yaml'\""
            for s in sites
        ),
    ]
    typer.echo("\n".join(lines))
