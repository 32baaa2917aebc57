/* nixl_lib.c -- the one translation unit of libnixlh.so / libnixlh.a, for
   users who prefer to link a library over defining NIXL_IMPLEMENTATION in
   a file of their own. It holds the core and every backend; the symbols are
   exactly those of the header build (the NIXL_API functions). */
#define NIXL_IMPLEMENTATION
#include "nixl.h"
#include "nixl_verbs.h"
#include "nixl_ucx.h"
#include "nixl_posix.h"
