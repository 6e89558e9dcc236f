// Stand-in for the host's javascript/ui.js, the one helper of it that the accordion uses: updateInput(target) tells
// gradio that a control's DOM value was changed by a script, by dispatching a bubbling "input" event from it.
function updateInput(target) {
    var event = new Event("input", {bubbles: true});
    Object.defineProperty(event, "target", {value: target});
    target.dispatchEvent(event);
}
