# Root Makefile. Parts owned by one area live in mk/*.mk and are included here.
include mk/*.mk
