# Link dependencies of the vrwkv libraries that have no usable CMake package on
# Debian 12, as imported targets. CMakeLists.txt includes this file, and so does
# the installed vrwkvConfig.cmake: a program linking the installed static
# libraries finds them the same way the build did.
#
#   vrwkv::dnnl               oneDNN. Its own CMake package insists on OpenCL headers (Debian builds it with
#                             the GPU runtime); the CPU library needs only the header and the library.
#   PkgConfig::VRWKV_LIBZIP   libzip, through pkg-config (its CMake package references tools Debian ships
#                             separately).
#   PkgConfig::VRWKV_CAIRO    cairo, only when VRWKV_WANT_CAIRO is true (the plot library).
#   vrwkv::opencv             OpenCV's core and imgproc (the segmentation pipeline's resizes). Debian ships
#                             OpenCV's CMake package and pkg-config file only with every module (libopencv-dev).
#
# Appends what it cannot find to VRWKV_DEPENDENCIES_MISSING.

if(NOT TARGET vrwkv::dnnl)
  find_path(VRWKV_DNNL_INCLUDE_DIR dnnl.h)
  find_library(VRWKV_DNNL_LIBRARY dnnl)
  if(VRWKV_DNNL_INCLUDE_DIR AND VRWKV_DNNL_LIBRARY)
    add_library(vrwkv::dnnl UNKNOWN IMPORTED)
    set_target_properties(vrwkv::dnnl PROPERTIES
      IMPORTED_LOCATION "${VRWKV_DNNL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${VRWKV_DNNL_INCLUDE_DIR}")
  else()
    list(APPEND VRWKV_DEPENDENCIES_MISSING "oneDNN (dnnl.h and libdnnl; Debian: libdnnl-dev)")
  endif()
endif()

if(NOT TARGET vrwkv::opencv)
  find_path(VRWKV_OPENCV_INCLUDE_DIR opencv2/imgproc.hpp PATH_SUFFIXES opencv4)
  find_library(VRWKV_OPENCV_IMGPROC opencv_imgproc)
  find_library(VRWKV_OPENCV_CORE opencv_core)
  if(VRWKV_OPENCV_INCLUDE_DIR AND VRWKV_OPENCV_IMGPROC AND VRWKV_OPENCV_CORE)
    add_library(vrwkv::opencv INTERFACE IMPORTED)
    set_target_properties(vrwkv::opencv PROPERTIES
      INTERFACE_LINK_LIBRARIES "${VRWKV_OPENCV_IMGPROC};${VRWKV_OPENCV_CORE}"
      INTERFACE_INCLUDE_DIRECTORIES "${VRWKV_OPENCV_INCLUDE_DIR}")
  else()
    list(APPEND VRWKV_DEPENDENCIES_MISSING "OpenCV imgproc (opencv2/imgproc.hpp; Debian: libopencv-imgproc-dev)")
  endif()
endif()

find_package(PkgConfig QUIET)
if(NOT PKG_CONFIG_FOUND)
  list(APPEND VRWKV_DEPENDENCIES_MISSING "pkg-config (for libzip and cairo)")
else()
  if(NOT TARGET PkgConfig::VRWKV_LIBZIP)
    pkg_check_modules(VRWKV_LIBZIP QUIET IMPORTED_TARGET libzip)
    if(NOT TARGET PkgConfig::VRWKV_LIBZIP)
      list(APPEND VRWKV_DEPENDENCIES_MISSING "libzip (pkg-config libzip; Debian: libzip-dev)")
    endif()
  endif()
  if(VRWKV_WANT_CAIRO AND NOT TARGET PkgConfig::VRWKV_CAIRO)
    pkg_check_modules(VRWKV_CAIRO QUIET IMPORTED_TARGET cairo)
    if(NOT TARGET PkgConfig::VRWKV_CAIRO)
      list(APPEND VRWKV_DEPENDENCIES_MISSING "cairo (pkg-config cairo; Debian: libcairo2-dev)")
    endif()
  endif()
endif()
