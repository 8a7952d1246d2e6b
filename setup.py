"""Maps the repository's top-level folders into the one import package ``fmcore``.

pyproject.toml holds the metadata; only the folder-to-package mapping lives here, because it is
computed: every subpackage below each folder is found and renamed under its ``fmcore`` prefix.
"""

from setuptools import find_namespace_packages, setup

FOLDER_TO_PACKAGE = {
    "core": "fmcore",
    "domains": "fmcore.domains",
    "plugins": "fmcore.plugins",
    "federated": "fmcore.federated",
    "configs": "fmcore.configs",
}


def mapped_packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder, package in FOLDER_TO_PACKAGE.items():
        packages.append(package)
        package_dir[package] = folder
        for sub in find_namespace_packages(folder, exclude=["*__pycache__*"]):
            packages.append(f"{package}.{sub}")
            package_dir[f"{package}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = mapped_packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "fmcore.configs": ["*.yaml", "**/*.yaml"],
        "fmcore.scaffold": ["templates/*/*.tmpl"],  # fmcore new's plugin skeletons
    },
    include_package_data=True,
)
