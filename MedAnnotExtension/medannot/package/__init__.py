"""The regulatory submission package: a BagIt bag of a project's results, guidelines, roster, agreement, audit
trail and signatures (``build_package``), and its offline check (``verify_package``)."""

from medannot.package.deid_seam import DEID_NOT_INSTALLED
from medannot.package.deid_seam import deid_gate as _deid_gate

from medannot.package.build import PackageBuildError, build_package  # noqa: E402
from medannot.package.verify import PackageInvalid, verify_package  # noqa: E402

__all__ = ["DEID_NOT_INSTALLED", "PackageBuildError", "PackageInvalid", "build_package", "verify_package"]
