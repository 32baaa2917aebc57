# nixlhConfig.cmake -- find_package(nixlh) for an installed nixl.h.
#   nixl::nixl        INTERFACE: the headers and the backends' link flags;
#                     define NIXL_IMPLEMENTATION in one of your files
#   nixl::lib         IMPORTED SHARED: libnixlh.so (no NIXL_IMPLEMENTATION)
#   nixl::lib_static  IMPORTED STATIC: libnixlh.a
# Relocatable: everything is found relative to this file
# (<prefix>/lib/cmake/nixlh/).
get_filename_component(_nixlh_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(_nixlh_deps ibverbs rdmacm ucp ucs uring pthread dl)
if(NOT TARGET nixl::nixl)
    add_library(nixl::nixl INTERFACE IMPORTED)
    set_target_properties(nixl::nixl PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${_nixlh_prefix}/include/nixlh"
        INTERFACE_LINK_LIBRARIES "${_nixlh_deps}")
endif()
if(NOT TARGET nixl::lib AND EXISTS "${_nixlh_prefix}/lib/libnixlh.so")
    add_library(nixl::lib SHARED IMPORTED)
    set_target_properties(nixl::lib PROPERTIES
        IMPORTED_LOCATION "${_nixlh_prefix}/lib/libnixlh.so"
        INTERFACE_INCLUDE_DIRECTORIES "${_nixlh_prefix}/include/nixlh"
        INTERFACE_LINK_LIBRARIES "${_nixlh_deps}")
endif()
if(NOT TARGET nixl::lib_static AND EXISTS "${_nixlh_prefix}/lib/libnixlh.a")
    add_library(nixl::lib_static STATIC IMPORTED)
    set_target_properties(nixl::lib_static PROPERTIES
        IMPORTED_LOCATION "${_nixlh_prefix}/lib/libnixlh.a"
        INTERFACE_INCLUDE_DIRECTORIES "${_nixlh_prefix}/include/nixlh"
        INTERFACE_LINK_LIBRARIES "${_nixlh_deps}")
endif()
set(nixlh_FOUND TRUE)
unset(_nixlh_prefix)
unset(_nixlh_deps)
