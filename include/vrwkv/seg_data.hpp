// The ADE20K validation set as mmseg 0.x reads it (ADE20KDataset with
// img_suffix '.jpg', seg_map_suffix '.png'; LoadAnnotations with the pillow
// backend and imdecode flag 'unchanged'), for the segmentation evaluation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vrwkv::seg {

// One image and its annotation, as paths.
struct SegSample {
  std::string image, annotation;
};

// The samples of the ADE20K layout
//   DIR/images/SPLIT/NAME.jpg  and  DIR/annotations/SPLIT/NAME.png,
// paired by file stem and sorted by the image's file name, as mmseg sorts its
// file list. Only the files directly in those two folders are looked at (the
// ADE20K release has no sub-folders); files with other suffixes (".jpg" and
// ".png" in lower case, as mmseg matches them) are skipped. Nothing is read:
// a file only has to exist.
//
// Error(Input), one line naming the folder and what was expected: a missing
// or unreadable folder, no .jpg image, an image without its annotation or an
// annotation without its image (naming the first such file by name order and
// saying how many there are).
std::vector<SegSample> list_ade20k(const std::string& dir, const std::string& split = "validation");

// A label image: height x width raw values, row-major.
struct LabelMap {
  std::int64_t height = 0, width = 0;
  std::vector<std::uint8_t> values;
};

// The raw 8-bit label values of a PNG, as mmseg's LoadAnnotations has them
// (Pillow, mode 'unchanged', then uint8):
//   palette PNG (1, 2, 4 or 8 bits)  the palette indices (the colours are not looked at);
//   8-bit greyscale                  the grey values;
//   1-bit greyscale                  0 and 1 (Pillow's mode "1" reads as booleans);
//   2- and 4-bit greyscale           scaled to 0..255 (x 85, x 17), as Pillow unpacks them.
// A transparency chunk changes nothing. Everything else (16-bit, RGB, RGBA,
// grey with alpha, not a PNG) is refused, and so is a damaged or truncated
// file, a side over 65535 or more than 2^28 pixels: Error(Input), one line
// naming the file and what was expected.
LabelMap read_label_png(const std::string& path);
// The same from memory; `name` only labels error messages.
LabelMap decode_label_png(const std::uint8_t* data, std::size_t size, const std::string& name);

// Writes `map` as an 8-bit greyscale PNG (the values unchanged), atomically:
// a failure leaves no file. Error(Input) for an empty or mis-sized map.
void write_label_png(const std::string& path, const LabelMap& map);

// The caller's check that an annotation fits its image (mmseg compares the
// prediction, resized to the image's size, with the annotation pixel for
// pixel): Error(Input) naming both files and both sizes when they differ.
void check_annotation_size(const SegSample& sample, const LabelMap& label, std::int64_t image_height,
                           std::int64_t image_width);

}  // namespace vrwkv::seg
