"""CycloneDX 1.6 JSON SBOMs of scanned images, built with cyclonedx-python-lib (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from services.scanner.inventory.scan import Inventory

MEDIA_TYPE = "application/vnd.cyclonedx+json"
TOOL = "hanzo-registry-scanner"


def build_sbom(repository: str, digest: str, inventories: Sequence[tuple[str, Inventory]]) -> bytes:
    """The SBOM of a manifest: the image (or index) as the metadata component, every package of every
    platform image (`(platform, inventory)`) as a library, each image depending on its packages."""
    bom = Bom()
    top = Component(type=ComponentType.CONTAINER, name=repository, version=digest, bom_ref="image")
    bom.metadata.component = top
    refs: set[str] = set()
    for platform, inv in inventories:
        if inv.os is not None:
            os_ref = f"os:{inv.os.id}:{inv.os.version_id}"
            if os_ref not in refs:
                refs.add(os_ref)
                bom.components.add(Component(type=ComponentType.OPERATING_SYSTEM, name=inv.os.id,
                                             version=inv.os.version_id, bom_ref=os_ref,
                                             description=inv.os.pretty_name or None))
        deps: list[Component] = []
        for pkg in inv.packages:
            ref = f"{pkg.purl}#{pkg.path}" if pkg.purl in refs else pkg.purl
            if ref in refs:
                continue
            refs.add(ref)
            licenses = [LicenseExpression(x) if " " in x else DisjunctiveLicense(name=x) for x in pkg.licenses[:5]]
            props = [Property(name="hanzo:layer", value=pkg.layer), Property(name="hanzo:path", value=pkg.path)]
            if platform:
                props.append(Property(name="hanzo:platform", value=platform))
            if pkg.source_name and pkg.source_name != pkg.name:
                props.append(Property(name="hanzo:source", value=f"{pkg.source_name} {pkg.source_version}"))
            try:
                purl = PackageURL.from_string(pkg.purl)
            except ValueError:
                purl = None
            component = Component(type=ComponentType.LIBRARY, name=pkg.name, version=pkg.version, purl=purl,
                                  bom_ref=ref, licenses=licenses, properties=props)
            bom.components.add(component)
            deps.append(component)
        bom.register_dependency(top, deps)
    return JsonV1Dot6(bom).output_as_string().encode()
