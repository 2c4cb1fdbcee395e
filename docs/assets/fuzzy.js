// Search help, applied to each query before the theme's search worker sees it ({type: 2, data}):
// - the whole query squeezed into one lowercase token of letters and digits is added with a high
//   boost, so it meets the one-word name tag of a method card ("Tip-Adapter-F" -> tipadapterf):
//   the card whose name was typed comes first ("+" counts as "plus": Adapter+ -> adapterplus);
// - every word of five or more letters is also searched with an edit distance of one (word~1),
//   so a one-letter typo in a method name still finds it.
(function () {
  if (typeof Worker === "undefined") return;
  var post = Worker.prototype.postMessage;
  Worker.prototype.postMessage = function (message) {
    if (message && message.type === 2 && typeof message.data === "string" && message.data.trim()) {
      var words = message.data.trim().split(/\s+/).map(function (word) {
        return /^[A-Za-z][A-Za-z0-9]{4,}$/.test(word) ? word + " " + word + "~1" : word;
      });
      var squeezed = message.data.toLowerCase().replace(/\+/g, "plus").replace(/[^\p{L}\p{N}]+/gu, "");
      if (squeezed.length > 1) words.push(squeezed + "^100");
      message = Object.assign({}, message, { data: words.join(" ") });
    }
    var rest = Array.prototype.slice.call(arguments, 1);
    return post.apply(this, [message].concat(rest));
  };
})();
