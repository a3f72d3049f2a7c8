// heatmap_from_npy: a CAM heatmap (and overlay) from activations / gradients saved as .npy.
//
//   heatmap_from_npy ACT.npy GRAD.npy [--method gradcam] [--image in.ppm] [--out heat.ppm]
//
// Save the tensors from Python, e.g. after running an onnxcam-exported model with onnxruntime:
//   np.save("act.npy", outputs["onnxcam_activation_0"]); np.save("grad.npy", ...gradient_0)
// Reads float32 (or float64) little-endian C-order .npy files of shape [1, C, h, w] or [C, h, w]
// (NCHW; with --layout NHWC: [1, h, w, C] or [h, w, C]); images are binary PPM (P6, maxval 255).
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxcam.hpp"

namespace {

// ---- .npy --------------------------------------------------------------------------------------
struct Array {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

std::string header_value(const std::string& header, const std::string& key) {
    const std::size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) throw std::runtime_error("npy header has no '" + key + "'");
    std::size_t v = header.find(':', k);
    if (v == std::string::npos) throw std::runtime_error("bad npy header");
    ++v;
    while (v < header.size() && header[v] == ' ') ++v;
    std::size_t end = v;
    if (header[v] == '\'') {
        end = header.find('\'', v + 1);
        return header.substr(v + 1, end - v - 1);
    }
    if (header[v] == '(') {
        end = header.find(')', v);
        return header.substr(v + 1, end - v - 1);
    }
    while (end < header.size() && header[end] != ',' && header[end] != '}') ++end;
    return header.substr(v, end - v);
}

bool little_endian_host() {
    const uint16_t one = 1;
    unsigned char b;
    std::memcpy(&b, &one, 1);
    return b == 1;
}

Array read_npy(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": " + std::strerror(errno));
    char magic[8];
    if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
        throw std::runtime_error(path + ": not a .npy file");
    uint32_t header_len = 0;
    unsigned char len[4] = {0, 0, 0, 0};
    if (magic[6] == 1) {
        f.read(reinterpret_cast<char*>(len), 2);
        header_len = len[0] | (len[1] << 8);
    } else {
        f.read(reinterpret_cast<char*>(len), 4);
        header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<uint32_t>(len[3]) << 24);
    }
    if (!f || header_len > (1u << 20)) throw std::runtime_error(path + ": bad .npy header");
    std::string header(header_len, '\0');
    f.read(header.data(), header_len);
    const std::string descr = header_value(header, "descr");
    if (header_value(header, "fortran_order").find("False") == std::string::npos)
        throw std::runtime_error(path + ": Fortran-order arrays are not supported");
    if (descr != "<f4" && descr != "<f8")
        throw std::runtime_error(path + ": dtype " + descr +
                                 " is not supported (little-endian float32 / float64)");
    if (!little_endian_host()) throw std::runtime_error("big-endian hosts are not supported");
    Array a;
    std::stringstream dims(header_value(header, "shape"));
    std::string item;
    int64_t count = 1;
    while (std::getline(dims, item, ',')) {
        if (item.find_first_not_of(' ') == std::string::npos) continue;
        const int64_t d = std::stoll(item);
        if (d <= 0 || count > (INT64_C(1) << 34) / d)
            throw std::runtime_error(path + ": bad shape");
        a.shape.push_back(d);
        count *= d;
    }
    a.data.resize(static_cast<std::size_t>(count));
    if (descr == "<f4") {
        f.read(reinterpret_cast<char*>(a.data.data()), count * 4);
    } else {
        std::vector<double> d(static_cast<std::size_t>(count));
        f.read(reinterpret_cast<char*>(d.data()), count * 8);
        for (std::size_t i = 0; i < d.size(); ++i) a.data[i] = static_cast<float>(d[i]);
    }
    if (!f) throw std::runtime_error(path + ": file is shorter than its header says");
    return a;
}

// ---- PPM (P6) ----------------------------------------------------------------------------------
struct Image {
    int64_t height = 0, width = 0;
    std::vector<uint8_t> rgb;
};

int64_t ppm_number(std::istream& f) {
    int c = f.get();
    while (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '#') {
        if (c == '#')
            while (c != '\n' && c != EOF) c = f.get();
        c = f.get();
    }
    int64_t v = 0;
    if (c < '0' || c > '9') throw std::runtime_error("bad PPM header");
    while (c >= '0' && c <= '9') {
        v = v * 10 + (c - '0');
        if (v > (INT64_C(1) << 20)) throw std::runtime_error("PPM too large");
        c = f.get();
    }
    return v;  // the single whitespace after the number was consumed
}

Image read_ppm(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": " + std::strerror(errno));
    char magic[2];
    if (!f.read(magic, 2) || magic[0] != 'P' || magic[1] != '6')
        throw std::runtime_error(path + ": not a binary PPM (P6)");
    Image im;
    im.width = ppm_number(f);
    im.height = ppm_number(f);
    if (ppm_number(f) != 255) throw std::runtime_error(path + ": only maxval 255 is supported");
    if (im.width <= 0 || im.height <= 0) throw std::runtime_error(path + ": empty image");
    im.rgb.resize(static_cast<std::size_t>(im.width * im.height * 3));
    if (!f.read(reinterpret_cast<char*>(im.rgb.data()), static_cast<std::streamsize>(im.rgb.size())))
        throw std::runtime_error(path + ": truncated pixel data");
    return im;
}

void write_ppm(const std::string& path, const uint8_t* rgb, int64_t height, int64_t width) {
    std::ofstream f(path, std::ios::binary);
    f << "P6\n" << width << " " << height << "\n255\n";
    f.write(reinterpret_cast<const char*>(rgb), static_cast<std::streamsize>(width * height * 3));
    if (!f) throw std::runtime_error(path + ": write failed");
}

// ---- command line ------------------------------------------------------------------------------
const char* kUsage =
    "usage: heatmap_from_npy ACTIVATIONS.npy GRADIENTS.npy [options]\n"
    "  Writes a CAM heatmap (PPM) from a target layer's activations and gradients saved as\n"
    "  .npy (float32, C order, [1, C, h, w]); GRADIENTS may be '-' for --method cam.\n"
    "options:\n"
    "  --method NAME     gradcam (default), gradcam++, xgradcam, layercam, hirescam,\n"
    "                    gradcam-elementwise, cam\n"
    "  --weights W.npy   classifier row [1, C] (onnxcam_cam_weight_0; needed by cam)\n"
    "  --layout L        NCHW (default) or NHWC\n"
    "  --image IN.ppm    binary PPM (P6): the heatmap gets its size and an overlay is written\n"
    "  --size HxW        heatmap size without --image (default 224x224)\n"
    "  --out PATH        heatmap PPM (default heatmap.ppm)\n"
    "  --overlay PATH    overlay PPM (default overlay.ppm; needs --image)\n"
    "  --alpha A         heatmap weight in the overlay (default 0.5)\n"
    "  --colormap NAME   OpenCV colormap name (default jet)\n"
    "  --no-relu         keep negative values before normalising\n";

struct Options {
    std::string activations, gradients, weights, image, out = "heatmap.ppm",
                                                        overlay = "overlay.ppm";
    std::string method = "gradcam", layout = "NCHW", colormap = "jet";
    int64_t height = 224, width = 224;
    double alpha = 0.5;
    bool relu = true;
};

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

Options parse(int argc, char** argv) {
    Options o;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw UsageError(a + " needs a value");
            return argv[++i];
        };
        if (a == "-h" || a == "--help") throw UsageError("");
        if (a == "--method") o.method = value();
        else if (a == "--weights") o.weights = value();
        else if (a == "--layout") o.layout = value();
        else if (a == "--image") o.image = value();
        else if (a == "--out") o.out = value();
        else if (a == "--overlay") o.overlay = value();
        else if (a == "--colormap") o.colormap = value();
        else if (a == "--no-relu") o.relu = false;
        else if (a == "--alpha") {
            const std::string v = value();
            char* end = nullptr;
            o.alpha = std::strtod(v.c_str(), &end);
            if (*end || !(o.alpha >= 0 && o.alpha <= 1))
                throw UsageError("--alpha must be a number in [0, 1]");
        } else if (a == "--size") {
            const std::string v = value();
            if (std::sscanf(v.c_str(), "%" SCNd64 "x%" SCNd64, &o.height, &o.width) != 2 ||
                o.height <= 0 || o.width <= 0)
                throw UsageError("--size must look like 224x224 (height x width)");
        } else if (!a.empty() && a[0] == '-' && a != "-") {
            throw UsageError("unknown option " + a);
        } else {
            positional.push_back(a);
        }
    }
    if (positional.size() != 2) throw UsageError("expected ACTIVATIONS.npy and GRADIENTS.npy");
    o.activations = positional[0];
    o.gradients = positional[1];
    if (o.layout != "NCHW" && o.layout != "NHWC") throw UsageError("--layout: NCHW or NHWC");
    return o;
}

int run(const Options& o) {
    onnxcam::Params p(onnxcam::method_id(o.method));
    p.layout = o.layout == "NHWC" ? ONNXCAM_LAYOUT_NHWC : ONNXCAM_LAYOUT_NCHW;
    p.relu = o.relu;
    p.alpha = o.alpha;
    p.colormap = onnxcam::colormap_id(o.colormap);
    const int32_t needs = onnxcam_method_needs(p.method);

    Array A = read_npy(o.activations);
    if (A.shape.size() == 3) A.shape.insert(A.shape.begin(), 1);
    if (A.shape.size() != 4 || A.shape[0] != 1)
        throw std::runtime_error(o.activations + ": expected shape [1, C, h, w] or [C, h, w]");
    const bool nhwc = p.layout == ONNXCAM_LAYOUT_NHWC;
    const int64_t C = nhwc ? A.shape[3] : A.shape[1];
    const int64_t h = nhwc ? A.shape[1] : A.shape[2];
    const int64_t w = nhwc ? A.shape[2] : A.shape[3];

    Array G, Wt;
    if (needs & ONNXCAM_NEEDS_GRADIENTS) {
        if (o.gradients == "-") throw UsageError(o.method + " needs GRADIENTS.npy");
        G = read_npy(o.gradients);
        if (G.data.size() != A.data.size())
            throw std::runtime_error("activations and gradients differ in size");
    }
    if (needs & ONNXCAM_NEEDS_CAM_WEIGHTS) {
        if (o.weights.empty()) throw UsageError("cam needs --weights W.npy");
        Wt = read_npy(o.weights);
        if (static_cast<int64_t>(Wt.data.size()) != C)
            throw std::runtime_error(o.weights + ": expected " + std::to_string(C) + " weights");
    }

    // feature map [h, w] in [0, 1] (the Python runtime's CamMap.feature)
    const std::vector<float> feat = onnxcam::cam_map(
        A.data.data(), G.data.empty() ? nullptr : G.data.data(),
        Wt.data.empty() ? nullptr : Wt.data.data(), 1, C, h, w, p);

    Image im;
    int64_t H = o.height, W = o.width;
    if (!o.image.empty()) {
        im = read_ppm(o.image);
        H = im.height;
        W = im.width;
    }
    // at the output size, min-max again (CamMap.original)
    const std::vector<float> big = onnxcam::resize_normalized(feat.data(), h, w, H, W);
    write_ppm(o.out, onnxcam::colorize(big.data(), H, W, p.colormap).data(), H, W);
    std::cout << o.method << ": features [" << C << ", " << h << ", " << w << "] -> heatmap "
              << W << "x" << H << " " << o.out << "\n";
    if (!o.image.empty()) {
        write_ppm(o.overlay, onnxcam::overlay(im.rgb.data(), H, W, big.data(), p).data(), H, W);
        std::cout << "overlay " << o.overlay << "\n";
    }
    const std::vector<onnxcam_box> boxes = onnxcam::boxes(big.data(), H, W, p);
    if (!boxes.empty())
        std::cout << "box (x0, y0, x1, y1) = (" << boxes[0].x0 << ", " << boxes[0].y0 << ", "
                  << boxes[0].x1 << ", " << boxes[0].y1 << "), score " << boxes[0].score << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const UsageError& e) {
        if (!*e.what()) {  // --help
            std::cout << kUsage;
            return 0;
        }
        std::cerr << "heatmap_from_npy: " << e.what() << "\n" << kUsage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "heatmap_from_npy: " << e.what() << "\n";
        return 1;
    }
}
