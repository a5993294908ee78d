include $(sort $(wildcard $(BR2_EXTERNAL_TIDEMARK_PATH)/package/*/*.mk))
