// Hover hints for the VMix controls. A1111's hints.js shows titles[<label or button text>] as a tooltip;
// the keys must stay equal to the labels in vmix_ext/settings.py (LABELS).
(function () {
    if (typeof titles === "undefined") {
        return;
    }
    Object.assign(titles, {
        "VMix adapter": "Adapter file from models/VMix (or --vmix-dir). Adapters are made with this extension's trainer; the 🔄 button rescans the folder.",
        "Scale (λ)": "Strength of the aesthetic term: 0 = no effect, 1 = as trained, up to 2 for a stronger look.",
        "Aesthetic dimensions": "Checked dimensions use their label (for example 'natural lighting'); unchecked ones use the adapter's neutral identifier.",
        "Conditional rows only": "Apply VMix to the prompt's rows only, not to the negative prompt's. Off follows the paper.",
        "Start at step fraction": "VMix is active from this fraction of the sampling steps (0 = first step).",
        "End at step fraction": "VMix stops at this fraction of the sampling steps (1 = last step).",
        "Input blocks ×": "Multiplies λ in the UNet's input blocks (composition and layout).",
        "Middle block ×": "Multiplies λ in the UNet's middle block.",
        "Output blocks ×": "Multiplies λ in the UNet's output blocks (texture and colour).",
        "Apply on": "Which sampling passes get VMix: both, the first pass only, or the hires-fix pass only.",
        "Hires pass λ (-1: same)": "λ for the hires-fix pass; -1 uses the same λ as the first pass.",
    });
})();

// After a generation of a tab, refresh that tab's VMix status line once: watch the tab's generation-info box and,
// when its text has changed and stayed so for a moment, click VMix's hidden status button. A debounced DOM
// observer, never a gradio listener on the host's output components (gradio 4 updates those hundreds of times).
// When the line changes for another reason (the user picked an adapter), the next generation refreshes it even if
// its infotext is the same as the last one's.
(function () {
    if (typeof onUiLoaded === "undefined") {
        return;
    }
    onUiLoaded(function () {
        ["txt2img", "img2img"].forEach(function (tab) {
            var info = gradioApp().getElementById("html_info_" + tab);
            var button = gradioApp().getElementById(tab + "_vmix_status_refresh");
            var line = gradioApp().getElementById(tab + "_vmix_status");
            if (!info || !button) {
                return;
            }
            var seen = info.textContent;
            var clicked = 0;
            var timer = null;
            new MutationObserver(function () {
                clearTimeout(timer);
                timer = setTimeout(function () {
                    if (info.textContent !== seen) {
                        seen = info.textContent;
                        clicked = Date.now();
                        button.click();
                    }
                }, 400);
            }).observe(info, {childList: true, subtree: true, characterData: true});
            if (line) {
                new MutationObserver(function () {
                    if (Date.now() - clicked > 1000) {
                        seen = null; // not our refresh: the line no longer shows the last generation
                    }
                }).observe(line, {childList: true, subtree: true, characterData: true});
            }
        });
    });
})();
