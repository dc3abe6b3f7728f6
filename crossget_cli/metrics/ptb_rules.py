"""The rules of CoreNLP 3.4.1's PTBLexer.flex (with PTBTokenizer's default options:
PTB3 escaping, LaTeX quotes, no Americanization, no slash/asterisk escaping,
assimilations split, untokenizable characters deleted) as Python regular
expressions, in the file's order, and what each rule's action makes of its match
(:func:`apply_action`).

The scanner that runs them over captions, and where it can still differ from the
Java tokenizer, is :mod:`.ptb_tokenizer`.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["NL", "RULES", "SPACE", "apply_action"]

# --------------------------------------------------------------------------------------
# PTB lexer (CoreNLP 3.4.1 PTBLexer.flex semantics, default PTBTokenizer options)
# --------------------------------------------------------------------------------------


def _ci(word: str) -> str:
    """A literal matched case-insensitively, as JFlex's %caseless does for
    literals (but not for character classes, which stay as written)."""
    out = []
    for ch in word:
        lo, up = ch.lower(), ch.upper()
        if lo != up and len(lo) == 1 and len(up) == 1:
            out.append(f"[{re.escape(lo)}{re.escape(up)}]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _words(text: str) -> list[str]:
    return text.split()


def _alts(*words: str) -> str:
    return "(?:" + "|".join(_ci(w) for w in sorted(words, key=len, reverse=True)) + ")"


# Character classes of the lexer as generated in 2014 (not of today's Unicode):
# [:letter:] (Java's Character.isLetter) and [:digit:] (Character.isDigit) in the
# BMP, read off the CoreNLP 3.4.1 jar itself: "Xa'ab" is one token iff X is a
# letter, "1.X" iff X is a digit.  They differ from Python 3.11's str.isalpha /
# str.isdecimal by 505 letters and 20 digits added to Unicode since, and by
# U+1885-U+1886, letters then and combining marks now.
_JAVA_LETTERS = (
    r"\u0041-\u005a\u0061-\u007a\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02c1\u02c6-\u02d1"
    r"\u02e0-\u02e4\u02ec\u02ee\u0370-\u0374\u0376-\u0377\u037a-\u037d\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    r"\u03a3-\u03f5\u03f7-\u0481\u048a-\u0527\u0531-\u0556\u0559\u0561-\u0587\u05d0-\u05ea\u05f0-\u05f2"
    r"\u0620-\u064a\u066e-\u066f\u0671-\u06d3\u06d5\u06e5-\u06e6\u06ee-\u06ef\u06fa-\u06fc\u06ff\u0710"
    r"\u0712-\u072f\u074d-\u07a5\u07b1\u07ca-\u07ea\u07f4-\u07f5\u07fa\u0800-\u0815\u081a\u0824\u0828"
    r"\u0840-\u0858\u08a0\u08a2-\u08ac\u0904-\u0939\u093d\u0950\u0958-\u0961\u0971-\u0977\u0979-\u097f"
    r"\u0985-\u098c\u098f-\u0990\u0993-\u09a8\u09aa-\u09b0\u09b2\u09b6-\u09b9\u09bd\u09ce\u09dc-\u09dd"
    r"\u09df-\u09e1\u09f0-\u09f1\u0a05-\u0a0a\u0a0f-\u0a10\u0a13-\u0a28\u0a2a-\u0a30\u0a32-\u0a33\u0a35-\u0a36"
    r"\u0a38-\u0a39\u0a59-\u0a5c\u0a5e\u0a72-\u0a74\u0a85-\u0a8d\u0a8f-\u0a91\u0a93-\u0aa8\u0aaa-\u0ab0"
    r"\u0ab2-\u0ab3\u0ab5-\u0ab9\u0abd\u0ad0\u0ae0-\u0ae1\u0b05-\u0b0c\u0b0f-\u0b10\u0b13-\u0b28\u0b2a-\u0b30"
    r"\u0b32-\u0b33\u0b35-\u0b39\u0b3d\u0b5c-\u0b5d\u0b5f-\u0b61\u0b71\u0b83\u0b85-\u0b8a\u0b8e-\u0b90"
    r"\u0b92-\u0b95\u0b99-\u0b9a\u0b9c\u0b9e-\u0b9f\u0ba3-\u0ba4\u0ba8-\u0baa\u0bae-\u0bb9\u0bd0\u0c05-\u0c0c"
    r"\u0c0e-\u0c10\u0c12-\u0c28\u0c2a-\u0c33\u0c35-\u0c39\u0c3d\u0c58-\u0c59\u0c60-\u0c61\u0c85-\u0c8c"
    r"\u0c8e-\u0c90\u0c92-\u0ca8\u0caa-\u0cb3\u0cb5-\u0cb9\u0cbd\u0cde\u0ce0-\u0ce1\u0cf1-\u0cf2\u0d05-\u0d0c"
    r"\u0d0e-\u0d10\u0d12-\u0d3a\u0d3d\u0d4e\u0d60-\u0d61\u0d7a-\u0d7f\u0d85-\u0d96\u0d9a-\u0db1\u0db3-\u0dbb"
    r"\u0dbd\u0dc0-\u0dc6\u0e01-\u0e30\u0e32-\u0e33\u0e40-\u0e46\u0e81-\u0e82\u0e84\u0e87-\u0e88\u0e8a\u0e8d"
    r"\u0e94-\u0e97\u0e99-\u0e9f\u0ea1-\u0ea3\u0ea5\u0ea7\u0eaa-\u0eab\u0ead-\u0eb0\u0eb2-\u0eb3\u0ebd"
    r"\u0ec0-\u0ec4\u0ec6\u0edc-\u0edf\u0f00\u0f40-\u0f47\u0f49-\u0f6c\u0f88-\u0f8c\u1000-\u102a\u103f"
    r"\u1050-\u1055\u105a-\u105d\u1061\u1065-\u1066\u106e-\u1070\u1075-\u1081\u108e\u10a0-\u10c5\u10c7\u10cd"
    r"\u10d0-\u10fa\u10fc-\u1248\u124a-\u124d\u1250-\u1256\u1258\u125a-\u125d\u1260-\u1288\u128a-\u128d"
    r"\u1290-\u12b0\u12b2-\u12b5\u12b8-\u12be\u12c0\u12c2-\u12c5\u12c8-\u12d6\u12d8-\u1310\u1312-\u1315"
    r"\u1318-\u135a\u1380-\u138f\u13a0-\u13f4\u1401-\u166c\u166f-\u167f\u1681-\u169a\u16a0-\u16ea\u1700-\u170c"
    r"\u170e-\u1711\u1720-\u1731\u1740-\u1751\u1760-\u176c\u176e-\u1770\u1780-\u17b3\u17d7\u17dc\u1820-\u1877"
    r"\u1880-\u18a8\u18aa\u18b0-\u18f5\u1900-\u191c\u1950-\u196d\u1970-\u1974\u1980-\u19ab\u19c1-\u19c7"
    r"\u1a00-\u1a16\u1a20-\u1a54\u1aa7\u1b05-\u1b33\u1b45-\u1b4b\u1b83-\u1ba0\u1bae-\u1baf\u1bba-\u1be5"
    r"\u1c00-\u1c23\u1c4d-\u1c4f\u1c5a-\u1c7d\u1ce9-\u1cec\u1cee-\u1cf1\u1cf5-\u1cf6\u1d00-\u1dbf\u1e00-\u1f15"
    r"\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4"
    r"\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    r"\u1ff6-\u1ffc\u2071\u207f\u2090-\u209c\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    r"\u212a-\u212d\u212f-\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183-\u2184\u2c00-\u2c2e\u2c30-\u2c5e"
    r"\u2c60-\u2ce4\u2ceb-\u2cee\u2cf2-\u2cf3\u2d00-\u2d25\u2d27\u2d2d\u2d30-\u2d67\u2d6f\u2d80-\u2d96"
    r"\u2da0-\u2da6\u2da8-\u2dae\u2db0-\u2db6\u2db8-\u2dbe\u2dc0-\u2dc6\u2dc8-\u2dce\u2dd0-\u2dd6\u2dd8-\u2dde"
    r"\u2e2f\u3005-\u3006\u3031-\u3035\u303b-\u303c\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff"
    r"\u3105-\u312d\u3131-\u318e\u31a0-\u31ba\u31f0-\u31ff\u3400-\u4db5\u4e00-\u9fcc\ua000-\ua48c\ua4d0-\ua4fd"
    r"\ua500-\ua60c\ua610-\ua61f\ua62a-\ua62b\ua640-\ua66e\ua67f-\ua697\ua6a0-\ua6e5\ua717-\ua71f\ua722-\ua788"
    r"\ua78b-\ua78e\ua790-\ua793\ua7a0-\ua7aa\ua7f8-\ua801\ua803-\ua805\ua807-\ua80a\ua80c-\ua822\ua840-\ua873"
    r"\ua882-\ua8b3\ua8f2-\ua8f7\ua8fb\ua90a-\ua925\ua930-\ua946\ua960-\ua97c\ua984-\ua9b2\ua9cf\uaa00-\uaa28"
    r"\uaa40-\uaa42\uaa44-\uaa4b\uaa60-\uaa76\uaa7a\uaa80-\uaaaf\uaab1\uaab5-\uaab6\uaab9-\uaabd\uaac0\uaac2"
    r"\uaadb-\uaadd\uaae0-\uaaea\uaaf2-\uaaf4\uab01-\uab06\uab09-\uab0e\uab11-\uab16\uab20-\uab26\uab28-\uab2e"
    r"\uabc0-\uabe2\uac00-\ud7a3\ud7b0-\ud7c6\ud7cb-\ud7fb\uf900-\ufa6d\ufa70-\ufad9\ufb00-\ufb06\ufb13-\ufb17"
    r"\ufb1d\ufb1f-\ufb28\ufb2a-\ufb36\ufb38-\ufb3c\ufb3e\ufb40-\ufb41\ufb43-\ufb44\ufb46-\ufbb1\ufbd3-\ufd3d"
    r"\ufd50-\ufd8f\ufd92-\ufdc7\ufdf0-\ufdfb\ufe70-\ufe74\ufe76-\ufefc\uff21-\uff3a\uff41-\uff5a\uff66-\uffbe"
    r"\uffc2-\uffc7\uffca-\uffcf\uffd2-\uffd7\uffda-\uffdc"
)
_JAVA_DIGITS = (
    r"\u0030-\u0039\u0660-\u0669\u06f0-\u06f9\u07c0-\u07c9\u0966-\u096f\u09e6-\u09ef\u0a66-\u0a6f\u0ae6-\u0aef"
    r"\u0b66-\u0b6f\u0be6-\u0bef\u0c66-\u0c6f\u0ce6-\u0cef\u0d66-\u0d6f\u0e50-\u0e59\u0ed0-\u0ed9\u0f20-\u0f29"
    r"\u1040-\u1049\u1090-\u1099\u17e0-\u17e9\u1810-\u1819\u1946-\u194f\u19d0-\u19d9\u1a80-\u1a89\u1a90-\u1a99"
    r"\u1b50-\u1b59\u1bb0-\u1bb9\u1c40-\u1c49\u1c50-\u1c59\ua620-\ua629\ua8d0-\ua8d9\ua900-\ua909\ua9d0-\ua9d9"
    r"\uaa50-\uaa59\uabf0-\uabf9\uff10-\uff19"
)
_L = f"[{_JAVA_LETTERS}]"
_D = f"[{_JAVA_DIGITS}]"
_LD = f"[{_JAVA_LETTERS}{_JAVA_DIGITS}]"
_UPPER = r"[A-Z\u00C0-\u00D6\u00D8-\u00DE]"
_SPLET = "&[aeiouAEIOU]" + _alts("acute", "grave", "uml") + ";"
_LETTER_EXTRA = (
    "[\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384\u0385"
    "\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd"
    "\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef"
    "\u06fa-\u06ff\u070f\u0711\u0730-\u074f\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903"
    "\u093c\u093e-\u094e\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd"
    "\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2"
    "\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48\u0e30-\u0e3a"
    "\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd]"
)
_LETTER = f"(?:{_L}|{_SPLET}|{_LETTER_EXTRA})"
SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
_NEWLINE = "(?:\r\n|[\r\n\u2028\u2029\u000b\u000c\u0085])"
_SPACENL = f"(?:{SPACE}|{_NEWLINE})"
_SGML = (
    r"<(?:[!?][A-Za-z\-][^>\r\n]*"
    r"|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?"
    r"|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"
)
_SENTEND = f"{_SPACENL}(?:{_SPACENL}|{_UPPER}|{_SGML})"
_APOS = "(?:['\u0092\u2019]|" + _ci("&apos;") + ")"
_APOSETC = f"(?:{_APOS}|[`\u0091\u2018\u201b])"
_HYPHEN = "[-_\u058a\u2010\u2011]"
_NUM = rf"(?:{_D}*(?:[.:,\u00ad\u066b\u066c]{_D}+)+|{_D}+)"
_WORD = f"{_LETTER}(?:{_LETTER}|{_D})*(?:[.!?]{_LETTER}(?:{_LETTER}|{_D})*)*"
_FILENAME_EXT = _alts(
    *_words("""bat bmp c class cgi cpp dll doc docx exe gif gz h htm html jar java jpeg jpg mov mp3 pdf php pl png ppt
    ps py sql tar txt wav x xml zip""")
)
_FILENAME = f"(?:{_LETTER}|{_D})+(?:[.](?:{_LETTER}|{_D})+)*(?:[.]{_FILENAME_EXT})"
_THING_PART = f"(?:[dDoOlL]{_APOSETC}{_LD})?{_LD}+"
_THING = f"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*"
_SPAMP = _ci("&amp;")
_THINGA = f"[A-Z]+(?:(?:[+&]|{_SPAMP})[A-Z]+)+"
_THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"


def _acronym(dotted: str) -> str:
    """CoreNLP's ACRO (``dotted="*"``) and ACRO2 (``"+"``, at least one dot) patterns."""
    return (
        rf"(?:[A-Za-z](?:\.[A-Za-z]){dotted}|"
        + _alts("Canada", "Sino", "Korean", "EU", "Japan", "non")
        + r"-"
        + _ci("U.S")
        + "|"
        + _ci("U.S.-")
        + "(?:"
        + _ci("U.K")
        + "|"
        + _ci("U.S.S.R")
        + "))"
    )


_ACRO = _acronym("*")
_ACRO2 = _acronym("+")
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{_ACRO2}\.|[A-Za-z0-9\u00ad]+))+"
_REDAUX = f"{_APOS}(?:[msdMSD]|{_ci('re')}|{_ci('ve')}|{_ci('ll')})"
_SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
_SREDAUX = f"{_ci('n')}{_APOSETC}{_ci('t')}"
_DBLQUOT = '(?:"|' + _ci("&quot;") + ")"
_QUOTES = (
    f"(?:''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]{{1,2}}|{_APOS})"
)
_INSENTP = "[,;:\u3001]"

# Abbreviations (PTBLexer's ABMONTH, ABDAYS, ... lists).  "[A]z" style entries are
# case sensitive on their first letter; everything else is caseless.
_ABMONTH = _alts("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec")
_ABDAYS = _alts("Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri")
_ABSTATE = (
    "(?:"
    + "|".join(
        [
            _ci(w)
            for w in _words("""Ala Ariz Calif Colo Conn Ct Dak Fla Ga Ind Kan Kans Ky Md Mich Minn Mo Mont Neb Nev Okla
            Penn Tenn Va Vt Wis Wisc Wyo""")
        ]
        + [
            "A" + _ci("z"),
            "A" + _ci("rk"),
            "D" + _ci("el"),
            "I" + _ci("ll"),
            "L" + _ci("a"),
            "M" + _ci("ass"),
            "M" + _ci("iss"),
            "O" + _ci("re"),
            "P" + _ci("a"),
            "T" + _ci("ex"),
            "W" + _ci("ash"),
        ]
    )
    + ")"
)
_ABCOMP = (
    "(?:"
    + _alts("Inc", "Co", "Cos", "Corp", "Ltd", "Plc", "Rt", "Bancorp", "Bhd", "Assn", "Univ", "Intl", "Sys")
    + "|"
    + _ci("P")
    + _ci("p")
    + "?"
    + _ci("t")
    + "[ye]"
    + _ci("s")
    + "?)"
)
_ABNUM = _alts("tel", "est", "ext", "sq")
_ABPTIT = "(?:" + _alts("Jr", "Sr", "Bros", "Blvd", "Rd", "Esq") + "|" + _alts("Ed", "Ph") + r"\." + _ci("D") + ")"
_ABBREV1 = f"(?:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|{_alts('etc', 'al', 'seq', 'Bldg')})\\."
_ABTITLE = (
    "(?:"
    + "|".join(
        [
            _ci(w)
            for w in _words("""Mr Mrs Ms Dr Drs Prof Profs Sen Sens Rep Reps Atty Attys Lt Col Gen Messrs Gov Govs Adm Rev
            Maj Sgt Cpl Pvt Capt St Ste Ave Pres Lieut Hon Brig Cmdr Comdr Pfc Spc Supt Supts Det Mt Ft Adj Adv Asst
            Assoc Ens Insp Mlle Mme Msgr Sfc""")
        ]
        + ["M" + _ci("iss")]
    )
    + ")"
)
_ABCOMP2 = "(?:" + _alts("Invt", "Elec", "Natl", "Mfg", "Mtg", "Dept") + ")"
_ABBREV4 = f"(?:{_ABTITLE}|{_alts('vs', 'Alex', 'Wm', 'Jos', 'Cie', 'cf', 'TREAS', 'Ph')}|{_ci('a.k.a')}|{_ACRO}|{_ABCOMP2})"
_ABBREV3 = _alts("ca", "fig", "figs", "prop", "no", "nos", "art", "bldg", "pp", "op") + r"\."
_ACRONYM_NEXT = (
    "(?:"
    + "|".join(
        w[0] + _ci(w[1:])
        for w in _words("""About According Additionally After An A As At But Earlier He Her Here However If In It Last
        Many More Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This We
        When While What Yet You""")
    )
    + f"|{_SGML})"
)
_PHONE = (
    r"(?:(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])[0-9]{3,4}[\- \u00a0]?[0-9]{3,5}"
    r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5})"
)
_LIKELYURL = (
    "(?:(?:" + _ci("www") + r"\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
    r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+" + _alts("com", "net", "org", "edu") + "))"
    r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
)
_FULLURL = _ci("http") + _ci("s") + r"?://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"
_EMAIL = (
    "(?:" + _ci("&lt;") + r"|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*"
    r"[^ \t\n\f\r\"<>|(){}.\u00a0]+(?:" + _ci("&gt;") + "|>)?"
)
_SMILEY = r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"
_ASIANSMILEY = (
    r"(?:[\^x=~<>]\.\[\^" + _ci("x") + r"=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
    r"|\([\^x=~<>']-[\^x=~<>'`]\))"
)
_MISCSYMBOL = (
    "[+%&~\\^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be\u05c0"
    "\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d\u07f6"
    "\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044"
    "\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20"
    "\uff3b-\uff40\uff5b-\uff65]"
)

# Actions (NL is public: the scanner in ptb_tokenizer ends a line on it).
_KEEP, _KEEP_NOSOFT, _PUSHBACK, _PERIOD_AGAIN, _ACRONYM, _NBSP, _DASH, _AMP, _QUOTE_L, _QUOTE_R = range(10)
_ELLIPSIS, _FRAC2, _CURRENCY, _PHONE_ACT, _PARENS, _LITERAL, _HYPHENS, _SKIP, NL, _DELETE = range(10, 20)


def _rule(pattern: str, action: int, context: str | None = None, arg: Any = None) -> tuple[re.Pattern, int, Any]:
    if context is None:
        return re.compile(f"(?P<t>{pattern})"), action, arg
    return re.compile(f"(?P<t>{pattern})(?:{context})"), action, arg


# The rules of PTBLexer.flex, in the file's order (earlier wins a tie in length).
RULES: list[tuple[re.Pattern, int, Any]] = [
    _rule(_ci("c") + r"[+][+]", _KEEP),
    _rule("[cCfF]#", _KEEP),
    _rule(_ci("cannot"), _PUSHBACK, arg=3),
    _rule("'" + _ci("twas"), _PUSHBACK, arg=3),
    _rule("'" + _ci("tis"), _PUSHBACK, arg=2),
    _rule(_alts("gonna", "gotta", "lemme", "gimme", "wanna"), _PUSHBACK, arg=2),
    _rule(_SGML, _NBSP),
    _rule("&" + _alts("MD", "mdash", "ndash") + ";|[\u0096\u0097\u2013\u2014\u2015]", _DASH),
    _rule(_SPAMP, _AMP),
    _rule("&(?:" + _alts("HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq") + "|#[0-9]+);", _KEEP),
    _rule(_WORD, _KEEP_NOSOFT, context=_REDAUX),
    _rule(_SWORD, _KEEP_NOSOFT, context=_SREDAUX),
    _rule(_WORD, _KEEP_NOSOFT),
    # APOWORD, one alternative per rule so that the longest alternative wins.
    _rule(f"{_APOS}{_ci('n')}{_APOS}?", _KEEP),
    _rule(f"[lLdDjJ]{_APOS}", _KEEP),
    _rule(f"{_ci('Dunkin')}{_APOS}", _KEEP),
    _rule(f"{_ci('somethin')}{_APOS}", _KEEP),
    _rule(f"{_ci('ol')}{_APOS}", _KEEP),
    _rule(f"{_APOS}{_ci('em')}", _KEEP),
    _rule(f"[A-HJ-XZn]{_APOSETC}{_L}{{2}}{_L}*", _KEEP),
    _rule(f"{_APOS}[2-9]0{_ci('s')}", _KEEP),
    _rule(f"{_APOS}{_ci('til')}{_ci('l')}?", _KEEP),
    _rule(f"{_L}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_L}*", _KEEP),
    _rule(f"{_APOS}{_ci('cause')}", _KEEP),
    _rule(_ci("cont'd") + r"\.?", _KEEP),
    _rule("|".join(_ci(w) for w in ("'twas", "nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l")), _KEEP),
    _rule(f"{_ci('O')}{_APOSETC}{_ci('o')}", _KEEP),
    _rule(f"[yY]{_APOS}", _KEEP, context=_L),
    _rule(_FULLURL, _KEEP),
    _rule(_LIKELYURL, _KEEP),
    _rule(_EMAIL, _KEEP),
    _rule(f"@[a-zA-Z_][a-zA-Z_0-9]*|#{_LETTER}+", _KEEP),
    _rule(_REDAUX, _QUOTE_R, context="[^A-Za-z]"),
    _rule(_SREDAUX, _QUOTE_R, context="[^A-Za-z]"),
    _rule(rf"{_D}{{1,2}}[\-/]{_D}{{1,2}}[\-/]{_D}{{2,4}}", _KEEP),
    _rule(rf"[\-+]?{_NUM}", _KEEP_NOSOFT),
    _rule("[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)", _KEEP),
    _rule(rf"(?:{_D}{{1,4}}[- \u00a0])?{_D}{{1,4}}(?:\\?/|\u2044){_D}{{1,4}}", _NBSP),
    _rule("[\u00bc\u00bd\u00be\u2153-\u215e]", _FRAC2),
    _rule(  # TBSPEC
        "|".join(
            [
                "-" + _alts("RRB", "LRB", "RCB", "LCB", "RSB", "LSB") + "-",
                _ci("C.D.s"),
                _ci("pro-"),
                _ci("anti-"),
                _ci("S") + f"(?:&|{_SPAMP})" + _ci("P-500"),
                _ci("S") + f"(?:&|{_SPAMP})" + _ci("Ls"),
                _ci("Cap") + _APOS + _ci("n"),
                _ci("c") + _APOS + _ci("est"),
            ]
        ),
        _AMP,
    ),
    _rule(_THING3, _KEEP),
    _rule(r"[A-Z]*\$|#", _KEEP),
    _rule("[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]", _CURRENCY),
    _rule(rf"{_ACRO}\.", _ACRONYM, context=f"{_SPACENL}+{_ACRONYM_NEXT}{_SPACENL}"),
    _rule(_ABBREV3, _KEEP, context=f"{_SPACENL}?{_D}"),
    _rule(f"(?:{_ci('pt')}[eyEY]|{_ci('co')})\\.", _KEEP, context=f"{SPACE}{_alts('ltd', 'lim')}"),
    _rule(_ABBREV1, _PERIOD_AGAIN, context=_SENTEND),
    _rule(_ABBREV1, _KEEP, context=r"[\s\S][\s\S]"),
    _rule(_ABBREV1, _PERIOD_AGAIN),
    _rule(f"{_ABBREV4}\\.", _KEEP),
    _rule(_ABBREV4, _KEEP, context=SPACE),
    _rule(_ACRO, _KEEP, context=_SPACENL),
    _rule(f"{_APOS}[0-9][0-9]", _KEEP, context=_SPACENL),
    _rule(_FILENAME, _KEEP, context=f"(?:{_SPACENL}|[.?!,])"),
    _rule(f"{_WORD}\\.", _KEEP_NOSOFT, context=_INSENTP),
    _rule(_PHONE, _PHONE_ACT),
    _rule(_DBLQUOT, _QUOTE_L, context="[A-Za-z0-9$]"),
    _rule(_DBLQUOT, _QUOTE_R),
    _rule("\x7f", _SKIP),
    _rule("<|" + _ci("&lt;"), _LITERAL, arg="<"),
    _rule(">|" + _ci("&gt;"), _LITERAL, arg=">"),
    _rule(_SMILEY, _PARENS, context="[^A-Za-z0-9]"),
    _rule(_ASIANSMILEY, _PARENS),
    _rule(r"\{", _LITERAL, arg="-LCB-"),
    _rule(r"\}", _LITERAL, arg="-RCB-"),
    _rule(r"\[", _LITERAL, arg="-LSB-"),
    _rule(r"\]", _LITERAL, arg="-RSB-"),
    _rule(r"\(", _LITERAL, arg="-LRB-"),
    _rule(r"\)", _LITERAL, arg="-RRB-"),
    _rule(r"-+", _HYPHENS),
    _rule("\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]", _ELLIPSIS),
    _rule("@+|#+|_+", _KEEP),
    _rule(r"\*+|(?:\\\*){1,3}", _KEEP),
    _rule(_INSENTP, _KEEP),
    _rule("[?!]+", _KEEP),
    _rule("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]", _KEEP),
    _rule("=", _KEEP),
    _rule("/", _KEEP),
    _rule(f"{_HTHING}\\.", _KEEP_NOSOFT, context=_INSENTP),
    _rule(_HTHING, _KEEP_NOSOFT),
    _rule(f"{_THING}\\.", _KEEP, context=_INSENTP),
    _rule(_THING, _KEEP),
    _rule(f"{_THINGA}\\.", _AMP, context=_INSENTP),
    _rule(_THINGA, _AMP),
    _rule("'", _QUOTE_L, context="[A-Za-z][^ \t\n\r\u00a0]"),
    _rule(_REDAUX, _QUOTE_R),
    _rule(_SREDAUX, _QUOTE_R),
    _rule(_QUOTES, _QUOTE_R),
    _rule("<<|>>", _KEEP),
    _rule(_MISCSYMBOL, _KEEP),
    _rule(f"\x00|{SPACE}+|[\u200b\u200e\u200f\ufeff]", _SKIP),
    _rule(_NEWLINE, NL),
    _rule(_ci("&nbsp;"), _SKIP),
    _rule(".", _DELETE),
]

# What the actions make of a match.
_LEFT_SINGLE = re.compile("[\u0091\u2018\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\u0092\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\u0093\u201c\u00ab]")
_RIGHT_DOUBLE = re.compile("[\u0094\u201d\u00bb]")
_SINGLE = re.compile("&apos;|'")
_DOUBLE = re.compile('"|&quot;')
_AMP_ENTITY = re.compile("(?i:&amp;)")
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _latex_quotes(tok: str, left: bool) -> str:
    tok = _SINGLE.sub("`" if left else "'", tok)
    tok = _DOUBLE.sub("``" if left else "''", tok)
    tok = _LEFT_SINGLE.sub("`", tok)
    tok = _RIGHT_SINGLE.sub("'", tok)
    tok = _LEFT_DOUBLE.sub("``", tok)
    return _RIGHT_DOUBLE.sub("''", tok)


def _no_soft_hyphens(tok: str) -> str:
    if "\u00ad" not in tok:
        return tok
    return tok.replace("\u00ad", "") or "-"


def apply_action(action: int, tok: str, arg: Any) -> tuple[str | None, int]:
    """(token or None, how many characters of ``tok`` are consumed)."""
    n = len(tok)
    if action == _KEEP:
        return tok, n
    if action == _KEEP_NOSOFT:
        return _no_soft_hyphens(tok), n
    if action == _PUSHBACK:
        return tok[: n - arg], n - arg
    if action == _PERIOD_AGAIN:  # the token keeps its period, which is read again as "."
        return tok, n - 1
    if action == _ACRONYM:
        if n == 2:  # "I." before a sentence start: the letter, then the period
            return tok[0], 1
        return tok, n - 1
    if action == _NBSP:
        return tok.replace(" ", "\u00a0"), n
    if action == _DASH:
        return "--", n
    if action == _AMP:
        return _AMP_ENTITY.sub("&", tok), n
    if action == _QUOTE_L:
        return _latex_quotes(tok, True), n
    if action == _QUOTE_R:
        return _latex_quotes(tok, False), n
    if action == _ELLIPSIS:
        return "...", n
    if action == _FRAC2:
        return _FRACTIONS.get(tok, tok), n
    if action == _CURRENCY:
        return tok.replace("\u00a2", "cents").replace("\u00a3", "#").translate(
            {0x80: "$", 0xA4: "$", 0x20A0: "$", 0x20AC: "$"}
        ), n
    if action == _PHONE_ACT:
        return tok.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-"), n
    if action == _PARENS:
        return tok.replace("(", "-LRB-").replace(")", "-RRB-"), n
    if action == _LITERAL:
        return arg, n
    if action == _HYPHENS:
        return ("--" if 3 <= n <= 4 else tok), n
    if action == NL:
        return "\n", n
    return None, n  # _SKIP, _DELETE
