"""Image sources: where the images and clean labels of a dataset come from, one file per dataset format."""

from lsl.data.sources.cifar import CIFAR10, CIFAR100
from lsl.data.sources.digits import Digits
from lsl.data.sources.download import fetch
from lsl.data.sources.fashion_mnist import FashionMNIST
from lsl.data.sources.image_folder import DecodedImages, ImageFolder
from lsl.data.sources.image_source import ImageSource, InMemorySource

__all__ = ["CIFAR10", "CIFAR100", "DecodedImages", "Digits", "FashionMNIST", "ImageFolder", "ImageSource",
           "InMemorySource", "fetch"]
