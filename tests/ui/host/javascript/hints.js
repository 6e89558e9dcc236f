// Stand-in for the host's javascript/hints.js: the global `titles` table (label or button text -> hover hint) that
// extensions add to, and the tooltips it gives: after UI updates, a span, button or label text found in `titles`
// gets that hint as its title attribute.
var titles = {};

onAfterUiUpdate(function () {
    gradioApp().querySelectorAll("span, button, label").forEach(function (node) {
        var text = node.textContent.trim();
        if (!node.title && Object.prototype.hasOwnProperty.call(titles, text)) {
            node.title = titles[text];
        }
    });
});
