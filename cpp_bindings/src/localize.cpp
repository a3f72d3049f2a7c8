// Localization (onnxcam/localize.py): threshold mask and boxes around its 8-connected
// components.
#include <algorithm>
#include <vector>

#include "internal.hpp"

namespace onnxcam::detail {

void threshold_mask(const float* map01, int64_t H, int64_t W, double fraction, uint8_t* mask) {
    const int64_t n = H * W;
    float peak = 0.0f;  // max(map, initial=0), non-finite values counting as 0
    for (int64_t i = 0; i < n; ++i) peak = std::max(peak, finite_or_zero(map01[i]));
    if (!(peak > 0.0f)) {
        std::fill(mask, mask + n, uint8_t{0});
        return;
    }
    // numpy compares the float32 map with the python float fraction * peak cast to float32
    const float cut = static_cast<float>(fraction * static_cast<double>(peak));
    for (int64_t i = 0; i < n; ++i) mask[i] = finite_or_zero(map01[i]) >= cut ? 1 : 0;
}

namespace {

struct Component {
    int32_t x0, y0, x1, y1;  // x1 / y1 exclusive
    int64_t area;
    double score;
};

// numpy's float32 np.add.reduce of a contiguous array (pairwise summation, 8 accumulators,
// blocks of 128), so scores -- and the order of boxes with near-equal scores -- match
// localize.boxes_from_map's map[labels == k].mean() exactly.
float pairwise_sum(const float* a, int64_t n) noexcept {
    if (n < 8) {
        float r = 0.0f;
        for (int64_t i = 0; i < n; ++i) r += a[i];
        return r;
    }
    if (n <= 128) {
        float r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        int64_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// score of every component: float32(sum / area) over its pixels in raster order, as numpy
void component_scores(const float* map01, const std::vector<int32_t>& label,
                      std::vector<Component>& comps) {
    std::vector<int64_t> offset(comps.size() + 1, 0);
    for (std::size_t k = 0; k < comps.size(); ++k) offset[k + 1] = offset[k] + comps[k].area;
    std::vector<float> values(static_cast<std::size_t>(offset.back()));
    std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
    for (std::size_t p = 0; p < label.size(); ++p)
        if (label[p]) values[fill[label[p] - 1]++] = finite_or_zero(map01[p]);
    for (std::size_t k = 0; k < comps.size(); ++k) {
        const float sum = 0.0f + pairwise_sum(values.data() + offset[k], comps[k].area);
        comps[k].score = static_cast<double>(sum / static_cast<float>(comps[k].area));
    }
}

}  // namespace

int64_t boxes(const float* map01, int64_t H, int64_t W, double fraction, bool largest,
              double min_area, onnxcam_box* out, int64_t max_boxes) {
    const int64_t n = H * W;
    std::vector<uint8_t> mask(static_cast<std::size_t>(n));
    threshold_mask(map01, H, W, fraction, mask.data());

    // Label components with a flood fill started from the first unlabelled pixel of each 2x2
    // block in block-raster order: cv2.connectedComponentsWithStats (block-based Spaghetti /
    // BBDT for 8-connectivity) numbers its components in that order, which decides ties below.
    std::vector<int32_t> label(static_cast<std::size_t>(n), 0);
    std::vector<Component> comps;
    std::vector<int64_t> stack;
    for (int64_t by = 0; by < H; by += 2)
        for (int64_t bx = 0; bx < W; bx += 2)
            for (int64_t y = by; y < std::min(by + 2, H); ++y)
                for (int64_t x = bx; x < std::min(bx + 2, W); ++x) {
                    const int64_t seed = y * W + x;
                    if (!mask[seed] || label[seed]) continue;
                    const int32_t id = static_cast<int32_t>(comps.size()) + 1;
                    Component c{static_cast<int32_t>(x), static_cast<int32_t>(y),
                                static_cast<int32_t>(x), static_cast<int32_t>(y), 0, 0.0};
                    label[seed] = id;
                    stack.assign(1, seed);
                    while (!stack.empty()) {
                        const int64_t p = stack.back();
                        stack.pop_back();
                        const int64_t py = p / W, px = p % W;
                        c.x0 = std::min(c.x0, static_cast<int32_t>(px));
                        c.y0 = std::min(c.y0, static_cast<int32_t>(py));
                        c.x1 = std::max(c.x1, static_cast<int32_t>(px));
                        c.y1 = std::max(c.y1, static_cast<int32_t>(py));
                        c.area += 1;
                        for (int64_t ny = std::max<int64_t>(py - 1, 0);
                             ny <= std::min(py + 1, H - 1); ++ny)
                            for (int64_t nx = std::max<int64_t>(px - 1, 0);
                                 nx <= std::min(px + 1, W - 1); ++nx) {
                                const int64_t q = ny * W + nx;
                                if (mask[q] && !label[q]) {
                                    label[q] = id;
                                    stack.push_back(q);
                                }
                            }
                    }
                    c.x1 += 1;
                    c.y1 += 1;
                    comps.push_back(c);
                }

    component_scores(map01, label, comps);

    std::vector<const Component*> keep;
    if (largest) {
        const Component* best = nullptr;  // the first of equally large ones, as python's max()
        for (const Component& c : comps)
            if (!best || c.area > best->area) best = &c;
        if (best) keep.push_back(best);
    } else {
        const double min_pixels = min_area * static_cast<double>(n);
        for (const Component& c : comps)
            if (!(static_cast<double>(c.area) < min_pixels)) keep.push_back(&c);
        std::stable_sort(keep.begin(), keep.end(), [](const Component* a, const Component* b) {
            return a->score > b->score;
        });
    }
    const int64_t found = static_cast<int64_t>(keep.size());
    for (int64_t i = 0; i < std::min(found, max_boxes); ++i) {
        const Component& c = *keep[static_cast<std::size_t>(i)];
        out[i] = onnxcam_box{c.x0, c.y0, c.x1, c.y1, c.area, c.score};
    }
    return found;
}

}  // namespace onnxcam::detail
