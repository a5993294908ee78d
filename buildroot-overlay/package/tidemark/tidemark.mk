################################################################################
#
# tidemark
#
################################################################################

# Built from this source tree (the external tree lives inside it).
TIDEMARK_VERSION = 0.1.0
TIDEMARK_SITE = $(BR2_EXTERNAL_TIDEMARK_PATH)/..
TIDEMARK_SITE_METHOD = local
TIDEMARK_SUBDIR = agent
TIDEMARK_LICENSE = Apache-2.0
TIDEMARK_CARGO_BUILD_OPTS = --locked --bin tidemark
TIDEMARK_CARGO_INSTALL_OPTS = --locked --bin tidemark

$(eval $(cargo-package))
