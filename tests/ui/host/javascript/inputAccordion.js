// Stand-in for the host's javascript/inputAccordion.js (A1111 16ab17429016, Forge dfdcbab685e5: the same), written
// from reading it. It turns each `.input-accordion` (modules/ui_components.py, InputAccordion) into a switch:
// - a visible checkbox `<id>-visible-checkbox` goes first into the accordion's label;
// - while "linked" (until the user clicks that checkbox itself), opening or closing the accordion sets the checkbox;
// - clicking the checkbox does not open or close the accordion, and unlinks the two from then on;
// - every change of the visible checkbox is copied into the hidden gradio checkbox `<id>-checkbox`, which is the
//   value the script receives, through updateInput;
// - a server-side change of the hidden checkbox (paste) calls inputAccordionChecked(id, checked), which sets the
//   visible checkbox and so opens or closes the accordion too while linked.
function inputAccordionChecked(id, checked) {
    var accordion = gradioApp().getElementById(id);
    accordion.visibleCheckbox.checked = checked;
    accordion.onVisibleCheckboxChange();
}

function setupAccordion(accordion) {
    var header = accordion.querySelector(".label-wrap");
    var hidden = gradioApp().querySelector("#" + accordion.id + "-checkbox input");
    var extra = gradioApp().querySelector("#" + accordion.id + "-extra");
    var linked = true;
    var isOpen = function () {
        return header.classList.contains("open");
    };

    var visible = document.createElement("INPUT");
    visible.type = "checkbox";
    visible.id = accordion.id + "-visible-checkbox";
    visible.className = hidden.className + " input-accordion-checkbox";
    visible.checked = isOpen();
    var label = header.querySelector("span");
    label.insertBefore(visible, label.firstChild);
    if (extra) {
        header.insertBefore(extra, header.lastElementChild);
    }

    accordion.visibleCheckbox = visible;
    accordion.onVisibleCheckboxChange = function () {
        if (linked && isOpen() !== visible.checked) {
            header.click();
        }
        hidden.checked = visible.checked;
        updateInput(hidden);
    };
    accordion.onChecked = function (checked) {
        if (isOpen() !== checked) {
            header.click();
        }
    };

    new MutationObserver(function () {
        accordion.classList.toggle("input-accordion-open", isOpen());
        if (linked) {
            visible.checked = isOpen();
            accordion.onVisibleCheckboxChange();
        }
    }).observe(header, {attributes: true, attributeFilter: ["class"]});

    visible.addEventListener("click", function (event) {
        linked = false;
        event.stopPropagation();
    });
    visible.addEventListener("input", accordion.onVisibleCheckboxChange);
}

onUiLoaded(function () {
    gradioApp().querySelectorAll(".input-accordion").forEach(setupAccordion);
});
