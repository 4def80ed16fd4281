"""Install chestxray_tf: `pip install -e .[test,dicom]` (or `make test`)."""

from setuptools import find_packages, setup

# TensorFlow 2.21 with Keras 3 on the TF backend. The full `tensorflow` package (GPU users
# install `tensorflow[and-cuda]==2.21.0`). Every package here is imported by the library
# (tests/test_dependencies.py), except tensorboard: the viewer of the training logs.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "tensorboard==2.21.0",
    "absl-py==2.5.1",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "pandas==3.1.1",
    "pillow==13.0.0",
    "scipy==1.17.1",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
]

EXTRAS_REQUIRE = {
    "dicom": ["pydicom==3.0.2"],
    "test": ["pytest==9.2.0", "hypothesis==6.170.15", "pydicom==3.0.2"],
}

setup(
    name="chestxray_tf",
    version="0.1.0",
    description=("Thoracic disease identification and localization with limited supervision "
                 "on NIH ChestX-ray14: Li et al. 2018 and four follow-up papers in TF/Keras."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["chestxray_tf", "chestxray_tf.*", "tfrecords_tools",
                                    "tfrecords_tools.*"]),
    package_data={"chestxray_tf": ["evaluation/published/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
